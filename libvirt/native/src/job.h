// One libvirt call (or a short sequence of them) run on the libuv thread pool, settling a
// promise on the JS thread. libvirt calls can block for as long as libvirtd takes (seconds under
// a state-change lock, up to the keepalive timeout when the daemon died), so none runs on the JS
// thread.
#pragma once

#include <napi.h>

#include <functional>
#include <string>

namespace vmplug {

// What a failed call left behind, copied out of libvirt's thread-local error before the worker
// thread moves on. Messages are libvirt's own or fixed strings of ours: they never carry
// arguments, so a secret value can never end up in one.
struct Failure {
  // "libvirt" (code/domain/level from virError), "closed" (our handle was closed), "invalid".
  std::string kind = "libvirt";
  std::string message;
  int code = 0;
  int domain = 0;
  int level = 0;
};

// Reads and resets the calling thread's last libvirt error.
Failure CaptureLibvirtError(const char* what);

// Builds the JS error for a failure: Error with `libvirtKind`, `libvirtCode`, `libvirtDomain`,
// `libvirtLevel` and `operation` properties that the TS wrapper turns into a typed error.
Napi::Error MakeJsError(Napi::Env env, const char* operation, const Failure& f);

class Job : public Napi::AsyncWorker {
 public:
  // Runs on a pool thread. Return false after filling `failure` to reject the promise.
  using Work = std::function<bool(Failure& failure)>;
  // Runs on the JS thread after Work succeeded; its value resolves the promise.
  using Done = std::function<Napi::Value(Napi::Env env)>;

  static Napi::Promise Start(Napi::Env env, const char* operation, Work work, Done done);

 protected:
  Job(Napi::Env env, const char* operation, Work work, Done done);
  void Execute() override;
  void OnOK() override;
  void OnError(const Napi::Error& e) override;

 private:
  const char* operation_;
  Work work_;
  Done done_;
  Failure failure_;
  Napi::Promise::Deferred deferred_;
};

}  // namespace vmplug
