#include "job.h"

#include <libvirt/virterror.h>

namespace vmplug {

Failure CaptureLibvirtError(const char* what) {
  Failure f;
  virErrorPtr err = virGetLastError();
  if (err != nullptr) {
    f.code = err->code;
    f.domain = err->domain;
    f.level = err->level;
    f.message = err->message != nullptr ? err->message : what;
    virResetLastError();
  } else {
    f.message = std::string(what) + " failed";
  }
  return f;
}

Napi::Error MakeJsError(Napi::Env env, const char* operation, const Failure& f) {
  Napi::Error e = Napi::Error::New(env, f.message);
  Napi::Object o = e.Value();
  o.Set("operation", Napi::String::New(env, operation));
  o.Set("libvirtKind", Napi::String::New(env, f.kind));
  if (f.kind == "libvirt") {
    o.Set("libvirtCode", Napi::Number::New(env, f.code));
    o.Set("libvirtDomain", Napi::Number::New(env, f.domain));
    o.Set("libvirtLevel", Napi::Number::New(env, f.level));
  }
  return e;
}

Job::Job(Napi::Env env, const char* operation, Work work, Done done)
    : Napi::AsyncWorker(env, operation),
      operation_(operation),
      work_(std::move(work)),
      done_(std::move(done)),
      deferred_(Napi::Promise::Deferred::New(env)) {}

Napi::Promise Job::Start(Napi::Env env, const char* operation, Work work, Done done) {
  auto* job = new Job(env, operation, std::move(work), std::move(done));
  Napi::Promise p = job->deferred_.Promise();
  job->Queue();  // AsyncWorker deletes itself after OnOK/OnError.
  return p;
}

void Job::Execute() {
  if (!work_(failure_)) SetError(failure_.message);
}

void Job::OnOK() {
  // Napi calls throw while a Worker's environment is being torn down; nobody is left to
  // receive the result then, and an exception must not escape into Node.
  try {
    Napi::Env env = Env();
    Napi::HandleScope scope(env);
    try {
      deferred_.Resolve(done_(env));
    } catch (const Napi::Error& e) {
      deferred_.Reject(e.Value());
    }
  } catch (...) {
  }
}

void Job::OnError(const Napi::Error&) {
  try {
    Napi::Env env = Env();
    Napi::HandleScope scope(env);
    deferred_.Reject(MakeJsError(env, operation_, failure_).Value());
  } catch (...) {
  }
}

}  // namespace vmplug
