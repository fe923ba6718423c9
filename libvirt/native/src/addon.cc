// vmplug's libvirt addon: the few libvirt calls and events vmplugd needs (device attach/detach,
// vCPU/memory setters, secrets, lifecycle and device-removed events), none of which the
// maintained Node bindings have. See docs/libvirt-binding.md.
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>
#include <dlfcn.h>
#include <napi.h>

#include <chrono>
#include <mutex>
#include <string>
#include <thread>

#include "conn.h"
#include "events.h"

namespace vmplug {

namespace {

// libvirt's default error handler prints every error to stderr; errors reach JS instead.
void Quiet(void*, virErrorPtr) {}

void RunEventLoop() {
  for (;;) {
    if (virEventRunDefaultImpl() < 0) {
      // Only fails on a broken poll(); back off rather than spin.
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  }
}

struct LoopStart {
  std::once_flag once;
  bool ok = false;
  std::string error;
};

// Process-wide by nature: libvirt has one event implementation per process, and every Node
// environment (main thread, workers) in the process shares it.
LoopStart& loopStart() {
  static LoopStart s;
  return s;
}

}  // namespace

void EnsureEventLoop(Napi::Env env) {
  LoopStart& s = loopStart();
  std::call_once(s.once, [&s] {
    // The loop thread and libvirt's callbacks run this library's code for the rest of the
    // process, but Node unloads an addon when the Worker that loaded it exits: pin it.
    Dl_info self;
    if (dladdr(reinterpret_cast<void*>(&RunEventLoop), &self) == 0 || self.dli_fname == nullptr ||
        dlopen(self.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE) == nullptr) {
      s.error = "cannot pin the addon in memory";
      return;
    }
    if (virEventRegisterDefaultImpl() < 0) {
      s.error = CaptureLibvirtError("virEventRegisterDefaultImpl").message;
      return;
    }
    std::thread(RunEventLoop).detach();
    s.ok = true;
  });
  if (!s.ok) throw Napi::Error::New(env, "libvirt event loop: " + s.error);
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  if (virInitialize() < 0) throw Napi::Error::New(env, "virInitialize failed");
  virSetErrorFunc(nullptr, Quiet);
  Napi::Function ctor = Connection::Define(env);
  env.SetInstanceData(new Napi::FunctionReference(Napi::Persistent(ctor)));
  exports.Set("Connection", ctor);
  exports.Set("connect", Napi::Function::New(env, Connect, "connect"));
  unsigned long version = 0;
  virGetVersion(&version, nullptr, nullptr);
  exports.Set("libvirtVersion", Napi::Number::New(env, static_cast<double>(version)));
  return exports;
}

}  // namespace vmplug

static Napi::Object InitModule(Napi::Env env, Napi::Object exports) { return vmplug::Init(env, exports); }

NODE_API_MODULE(vmplug_libvirt, InitModule)
