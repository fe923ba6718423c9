// vmplug's file addon: file work that JavaScript does in several trips through libuv's pool, as
// one call on one pool thread each. First the whole-file replace of core/atomic-file.ts (temp
// file, write, fsync, rename, fsync of the directory). Written in JavaScript it
// is eight trips through the pool (open, write, fsync, close, rename, open, fsync, close), and on
// a busy node each trip is a thread wake-up and a completion the event loop waits its turn for:
// the journal's writes were the largest share of vmplugd's own time per attach. The syscalls and
// their order are the same; only the trips go. Built as its own target (binding.gyp), libc only.
//
// replaceFile(dir, name, tempName, data, mode, durable) -> Promise<void>
//   Creates `tempName` in `dir` exclusively with `mode` (the umask applies, as for open(2)),
//   writes `data` (a Buffer), fsyncs it when `durable`, closes it, renames it over `name`, and
//   fsyncs `dir` when `durable`. On failure the temp file is unlinked (unless the rename happened)
//   and the promise rejects with an Error whose `code` is the errno name (ENOENT, ENOSPC...),
//   `syscall` the failing call and `path` the file it was about.
// readWhole(path, maxBytes) -> Promise<Buffer>: open, read to the end, close (EFBIG past maxBytes).
// openExclusive(path) -> Promise<void>: open O_RDONLY|O_EXCL and close (the host-use probe).
// Errors of all three as node:fs's.
#include <fcntl.h>
#include <napi.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

namespace {

// The failing call of a worker, as node:fs reports one: the errno name as `code`, the call, the path.
Napi::Error ErrnoError(Napi::Env env, int e, const std::string& syscall, const std::string& path) {
  Napi::Error err = Napi::Error::New(env, syscall + " " + path + ": " + std::strerror(e));
  const char* name = strerrorname_np(e);
  err.Set("code", Napi::String::New(env, name != nullptr ? name : "E" + std::to_string(e)));
  err.Set("errno", Napi::Number::New(env, -e));
  err.Set("syscall", Napi::String::New(env, syscall));
  err.Set("path", Napi::String::New(env, path));
  return err;
}

class ReplaceWorker : public Napi::AsyncWorker {
 public:
  ReplaceWorker(Napi::Env env, std::string dir, std::string name, std::string temp,
                std::vector<char> data, mode_t mode, bool durable)
      : Napi::AsyncWorker(env),
        deferred_(Napi::Promise::Deferred::New(env)),
        dir_(std::move(dir)),
        name_(std::move(name)),
        temp_(std::move(temp)),
        data_(std::move(data)),
        mode_(mode),
        durable_(durable) {}

  Napi::Promise Promise() { return deferred_.Promise(); }

 protected:
  void Execute() override {
    int dirFd = open(dir_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dirFd < 0) {
      Fail("open", dir_);
      return;
    }
    Run(dirFd);
    close(dirFd);
  }

  void OnOK() override { deferred_.Resolve(Env().Undefined()); }

  void OnError(const Napi::Error&) override {
    deferred_.Reject(ErrnoError(Env(), errno_, syscall_, path_).Value());
  }

 private:
  void Run(int dirFd) {
    const std::string tempPath = dir_ + "/" + temp_;
    int fd = openat(dirFd, temp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode_);
    if (fd < 0) {
      Fail("open", tempPath);
      return;
    }
    bool ok = WriteAll(fd, tempPath) && (!durable_ || Sync(fd, tempPath));
    if (close(fd) != 0 && ok) ok = Fail("close", tempPath);
    if (ok && renameat(dirFd, temp_.c_str(), dirFd, name_.c_str()) != 0) ok = Fail("rename", dir_ + "/" + name_);
    if (!ok) {
      unlinkat(dirFd, temp_.c_str(), 0);
      return;
    }
    if (durable_) Sync(dirFd, dir_);
  }

  bool WriteAll(int fd, const std::string& path) {
    size_t done = 0;
    while (done < data_.size()) {
      ssize_t n = write(fd, data_.data() + done, data_.size() - done);
      if (n < 0) {
        if (errno == EINTR) continue;
        return Fail("write", path);
      }
      done += static_cast<size_t>(n);
    }
    return true;
  }

  bool Sync(int fd, const std::string& path) { return fsync(fd) == 0 || Fail("fsync", path); }

  /** Records the failing call (errno as it is now) and makes the promise reject; always false. */
  bool Fail(const char* syscall, const std::string& path) {
    errno_ = errno;
    syscall_ = syscall;
    path_ = path;
    SetError(syscall_);
    return false;
  }

  Napi::Promise::Deferred deferred_;
  std::string dir_, name_, temp_;
  std::vector<char> data_;
  mode_t mode_;
  bool durable_;
  int errno_ = 0;
  std::string syscall_, path_;
};

// A whole file in one trip: open, read until end of file, close. /proc tables are seq_files that
// hand out at most a page per read(2), so readFile's trip per read adds up on a node with many
// mounts; here the loop runs on the pool thread.
class ReadWorker : public Napi::AsyncWorker {
 public:
  ReadWorker(Napi::Env env, std::string path, size_t max)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), path_(std::move(path)), max_(max) {}

  Napi::Promise Promise() { return deferred_.Promise(); }

 protected:
  void Execute() override {
    int fd = open(path_.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return Fail("open");
    data_.resize(64 * 1024);
    size_t len = 0;
    for (;;) {
      if (len == data_.size()) {
        if (data_.size() >= max_) {
          errno = EFBIG;
          Fail("read");
          break;
        }
        data_.resize(std::min(data_.size() * 2, max_));
      }
      ssize_t n = read(fd, data_.data() + len, data_.size() - len);
      if (n < 0) {
        if (errno == EINTR) continue;
        Fail("read");
        break;
      }
      if (n == 0) break;
      len += static_cast<size_t>(n);
    }
    data_.resize(len);
    close(fd);
  }

  void OnOK() override {
    deferred_.Resolve(Napi::Buffer<char>::Copy(Env(), data_.data(), data_.size()));
  }

  void OnError(const Napi::Error&) override {
    deferred_.Reject(ErrnoError(Env(), errno_, syscall_, path_).Value());
  }

 private:
  void Fail(const char* syscall) {
    errno_ = errno;
    syscall_ = syscall;
    SetError(syscall_);
  }

  Napi::Promise::Deferred deferred_;
  std::string path_;
  size_t max_;
  std::vector<char> data_;
  int errno_ = 0;
  std::string syscall_;
};

// open(path, O_RDONLY | O_EXCL) and close at once, in one trip: on a block device the kernel
// refuses such an open with EBUSY while anything holds the device exclusively (a mounted
// filesystem, swap, a device-mapper or md member). Resolves when the open succeeded.
class ExclusiveOpenWorker : public Napi::AsyncWorker {
 public:
  ExclusiveOpenWorker(Napi::Env env, std::string path)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), path_(std::move(path)) {}

  Napi::Promise Promise() { return deferred_.Promise(); }

 protected:
  void Execute() override {
    int fd = open(path_.c_str(), O_RDONLY | O_EXCL | O_CLOEXEC);
    if (fd < 0) {
      errno_ = errno;
      SetError("open");
      return;
    }
    close(fd);
  }

  void OnOK() override { deferred_.Resolve(Env().Undefined()); }

  void OnError(const Napi::Error&) override {
    deferred_.Reject(ErrnoError(Env(), errno_, "open", path_).Value());
  }

 private:
  Napi::Promise::Deferred deferred_;
  std::string path_;
  int errno_ = 0;
};

Napi::Value ReadWhole(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsString() || !info[1].IsNumber()) {
    throw Napi::TypeError::New(env, "readWhole(path, maxBytes)");
  }
  auto max = static_cast<size_t>(info[1].As<Napi::Number>().Int64Value());
  auto* worker = new ReadWorker(env, info[0].As<Napi::String>(), max < 1 ? 1 : max);
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

Napi::Value OpenExclusive(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) throw Napi::TypeError::New(env, "openExclusive(path)");
  auto* worker = new ExclusiveOpenWorker(env, info[0].As<Napi::String>());
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

Napi::Value ReplaceFile(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 6 || !info[0].IsString() || !info[1].IsString() || !info[2].IsString() ||
      !info[3].IsBuffer() || !info[4].IsNumber() || !info[5].IsBoolean()) {
    throw Napi::TypeError::New(env, "replaceFile(dir, name, tempName, data: Buffer, mode, durable)");
  }
  std::string name = info[1].As<Napi::String>();
  std::string temp = info[2].As<Napi::String>();
  // Names inside `dir` only: a separator would let the call reach elsewhere.
  if (name.empty() || temp.empty() || name.find('/') != std::string::npos ||
      temp.find('/') != std::string::npos) {
    throw Napi::TypeError::New(env, "replaceFile: name and tempName are plain file names");
  }
  auto buf = info[3].As<Napi::Buffer<char>>();
  std::vector<char> data(buf.Data(), buf.Data() + buf.Length());
  auto mode = static_cast<mode_t>(info[4].As<Napi::Number>().Uint32Value() & 07777);
  auto* worker = new ReplaceWorker(env, info[0].As<Napi::String>(), std::move(name), std::move(temp),
                                   std::move(data), mode, info[5].As<Napi::Boolean>());
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("replaceFile", Napi::Function::New(env, ReplaceFile, "replaceFile"));
  exports.Set("readWhole", Napi::Function::New(env, ReadWhole, "readWhole"));
  exports.Set("openExclusive", Napi::Function::New(env, OpenExclusive, "openExclusive"));
  return exports;
}

}  // namespace

NODE_API_MODULE(vmplug_fsio, Init)
