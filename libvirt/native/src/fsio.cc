// vmplug's file addon: file work that JavaScript does in several trips through libuv's pool, as
// one call on one pool thread each. On a busy node each trip is a thread wake-up and a completion
// the event loop waits its turn for (~0.5 ms a trip in vmplugd under bench:attach on 2 shared
// cores): the journal's writes and the host check's reads were the largest share of vmplugd's own
// time per attach. The syscalls and their order are those node:fs would make; only the trips go.
// Built as its own target (binding.gyp), libc only.
//
// replaceFile(dir, name, tempName, data, mode, durable) -> Promise<void>
//   core/atomic-file.ts's replace (eight trips in JavaScript): creates `tempName` in `dir`
//   exclusively with `mode` (the umask applies, as for open(2)), writes `data` (a Buffer), fsyncs
//   it when `durable`, closes it, renames it over `name`, and fsyncs `dir` when `durable`. On
//   failure the temp file is unlinked (unless the rename happened).
// readWhole(path, maxBytes) -> Promise<Buffer>: open, read to the end, close; regular files only
//   (EISDIR for a directory, EINVAL for anything else: a FIFO is never read), EFBIG past maxBytes.
//   (/proc's tables are seq_files that hand out a page per read(2): one trip per 4 KiB in node.)
// openExclusive(path) -> Promise<void>: open O_RDONLY|O_EXCL and close (the host-use probe).
// removeFile(dir, name, durable) -> Promise<boolean>: unlink, then fsync of dir when something was
//   removed (false: nothing was there).
// Every failure rejects with an Error as node:fs's: `code` the errno name (ENOENT, ENOSPC...),
// `errno`, `syscall` the failing call and `path` the file it was about.
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

// One call's work on a pool thread, settling a promise: Execute() does the syscalls and calls
// Fail() on the first that fails; Resolve() gives the value on success.
class FsWorker : public Napi::AsyncWorker {
 public:
  explicit FsWorker(Napi::Env env) : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)) {}

  /** Queues the work; the promise it settles. */
  Napi::Promise Start() {
    Napi::Promise promise = deferred_.Promise();
    Queue();
    return promise;
  }

 protected:
  /** Records the failing call (errno as it is now); always false. */
  bool Fail(const char* syscall, const std::string& path) {
    errno_ = errno;
    syscall_ = syscall;
    path_ = path;
    SetError(syscall_);
    return false;
  }

  virtual Napi::Value Resolve() { return Env().Undefined(); }

  /** Opens `path` with `flags`, runs `use(fd)` and closes it; a failed open is Fail()ed. */
  template <typename Use>
  void WithOpen(const std::string& path, int flags, Use use) {
    int fd = open(path.c_str(), flags);
    if (fd < 0) {
      Fail("open", path);
      return;
    }
    use(fd);
    close(fd);
  }

 private:
  void OnOK() override { deferred_.Resolve(Resolve()); }

  void OnError(const Napi::Error&) override {
    Napi::Env env = Env();
    Napi::Error err = Napi::Error::New(env, syscall_ + " " + path_ + ": " + std::strerror(errno_));
    const char* name = strerrorname_np(errno_);
    err.Set("code", Napi::String::New(env, name != nullptr ? name : "E" + std::to_string(errno_)));
    err.Set("errno", Napi::Number::New(env, -errno_));
    err.Set("syscall", Napi::String::New(env, syscall_));
    err.Set("path", Napi::String::New(env, path_));
    deferred_.Reject(err.Value());
  }

  Napi::Promise::Deferred deferred_;
  int errno_ = 0;
  std::string syscall_, path_;
};

class ReplaceWorker : public FsWorker {
 public:
  ReplaceWorker(Napi::Env env, std::string dir, std::string name, std::string temp, std::vector<char> data,
                mode_t mode, bool durable)
      : FsWorker(env),
        dir_(std::move(dir)),
        name_(std::move(name)),
        temp_(std::move(temp)),
        data_(std::move(data)),
        mode_(mode),
        durable_(durable) {}

 protected:
  void Execute() override {
    WithOpen(dir_, O_RDONLY | O_DIRECTORY | O_CLOEXEC, [this](int dirFd) { Replace(dirFd); });
  }

 private:
  void Replace(int dirFd) {
    const std::string tempPath = dir_ + "/" + temp_;
    int fd = openat(dirFd, temp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode_);
    if (fd < 0) {
      Fail("open", tempPath);
      return;
    }
    bool ok = WriteAll(fd, tempPath) && (!durable_ || fsync(fd) == 0 || Fail("fsync", tempPath));
    if (close(fd) != 0 && ok) ok = Fail("close", tempPath);
    if (ok && renameat(dirFd, temp_.c_str(), dirFd, name_.c_str()) != 0) ok = Fail("rename", dir_ + "/" + name_);
    if (!ok) {
      unlinkat(dirFd, temp_.c_str(), 0);
      return;
    }
    if (durable_ && fsync(dirFd) != 0) Fail("fsync", dir_);
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

  std::string dir_, name_, temp_;
  std::vector<char> data_;
  mode_t mode_;
  bool durable_;
};

class ReadWorker : public FsWorker {
 public:
  ReadWorker(Napi::Env env, std::string path, size_t max) : FsWorker(env), path_(std::move(path)), max_(max) {}

 protected:
  void Execute() override {
    // O_NONBLOCK: a FIFO in the file's place must not hold the pool thread until a writer comes.
    WithOpen(path_, O_RDONLY | O_CLOEXEC | O_NONBLOCK, [this](int fd) { ReadAll(fd); });
  }

  Napi::Value Resolve() override { return Napi::Buffer<char>::Copy(Env(), data_.data(), data_.size()); }

 private:
  void ReadAll(int fd) {
    struct stat st;
    if (fstat(fd, &st) != 0) {
      Fail("fstat", path_);
      return;
    }
    if (!S_ISREG(st.st_mode)) {
      errno = S_ISDIR(st.st_mode) ? EISDIR : EINVAL;
      Fail("read", path_);
      return;
    }
    // One byte past the bound: reading it means the file is larger than allowed.
    const size_t cap = max_ + 1;
    data_.resize(std::min<size_t>(64 * 1024, cap));
    size_t len = 0;
    for (;;) {
      if (len == data_.size()) {
        if (len >= cap) {
          errno = EFBIG;
          Fail("read", path_);
          return;
        }
        data_.resize(std::min(data_.size() * 2, cap));
      }
      ssize_t n = read(fd, data_.data() + len, data_.size() - len);
      if (n < 0) {
        if (errno == EINTR) continue;
        Fail("read", path_);
        return;
      }
      if (n == 0) break;
      len += static_cast<size_t>(n);
    }
    data_.resize(len);
  }

  std::string path_;
  size_t max_;
  std::vector<char> data_;
};

class ExclusiveOpenWorker : public FsWorker {
 public:
  ExclusiveOpenWorker(Napi::Env env, std::string path) : FsWorker(env), path_(std::move(path)) {}

 protected:
  // On a block device the kernel refuses this open with EBUSY while anything holds the device
  // exclusively: a mounted filesystem, swap, a device-mapper or md member.
  void Execute() override {
    WithOpen(path_, O_RDONLY | O_EXCL | O_CLOEXEC, [](int) {});
  }

 private:
  std::string path_;
};

class RemoveWorker : public FsWorker {
 public:
  RemoveWorker(Napi::Env env, std::string dir, std::string name, bool durable)
      : FsWorker(env), dir_(std::move(dir)), name_(std::move(name)), durable_(durable) {}

 protected:
  void Execute() override {
    int dirFd = open(dir_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dirFd < 0) {
      // No directory, no file.
      if (errno != ENOENT) Fail("open", dir_);
      return;
    }
    if (unlinkat(dirFd, name_.c_str(), 0) != 0) {
      if (errno != ENOENT) Fail("unlink", dir_ + "/" + name_);
    } else {
      removed_ = true;
      if (durable_ && fsync(dirFd) != 0) Fail("fsync", dir_);
    }
    close(dirFd);
  }

  Napi::Value Resolve() override { return Napi::Boolean::New(Env(), removed_); }

 private:
  std::string dir_, name_;
  bool durable_;
  bool removed_ = false;
};

/** A plain file name (no separator, not empty): the calls never reach outside their directory. */
std::string FileName(const Napi::Env& env, const Napi::Value& v, const char* what) {
  std::string name = v.As<Napi::String>();
  if (name.empty() || name.find('/') != std::string::npos) {
    throw Napi::TypeError::New(env, std::string(what) + " must be a plain file name");
  }
  return name;
}

Napi::Value ReplaceFile(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 6 || !info[0].IsString() || !info[1].IsString() || !info[2].IsString() ||
      !info[3].IsBuffer() || !info[4].IsNumber() || !info[5].IsBoolean()) {
    throw Napi::TypeError::New(env, "replaceFile(dir, name, tempName, data: Buffer, mode, durable)");
  }
  std::string name = FileName(env, info[1], "name");
  std::string temp = FileName(env, info[2], "tempName");
  auto buf = info[3].As<Napi::Buffer<char>>();
  std::vector<char> data(buf.Data(), buf.Data() + buf.Length());
  auto mode = static_cast<mode_t>(info[4].As<Napi::Number>().Uint32Value() & 07777);
  return (new ReplaceWorker(env, info[0].As<Napi::String>(), std::move(name), std::move(temp), std::move(data),
                            mode, info[5].As<Napi::Boolean>()))
      ->Start();
}

Napi::Value ReadWhole(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsString() || !info[1].IsNumber()) {
    throw Napi::TypeError::New(env, "readWhole(path, maxBytes)");
  }
  int64_t max = info[1].As<Napi::Number>().Int64Value();
  return (new ReadWorker(env, info[0].As<Napi::String>(), static_cast<size_t>(max < 0 ? 0 : max)))->Start();
}

Napi::Value OpenExclusive(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) throw Napi::TypeError::New(env, "openExclusive(path)");
  return (new ExclusiveOpenWorker(env, info[0].As<Napi::String>()))->Start();
}

Napi::Value RemoveFile(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 3 || !info[0].IsString() || !info[1].IsString() || !info[2].IsBoolean()) {
    throw Napi::TypeError::New(env, "removeFile(dir, name, durable)");
  }
  std::string name = FileName(env, info[1], "name");
  return (new RemoveWorker(env, info[0].As<Napi::String>(), std::move(name), info[2].As<Napi::Boolean>()))->Start();
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("replaceFile", Napi::Function::New(env, ReplaceFile, "replaceFile"));
  exports.Set("readWhole", Napi::Function::New(env, ReadWhole, "readWhole"));
  exports.Set("openExclusive", Napi::Function::New(env, OpenExclusive, "openExclusive"));
  exports.Set("removeFile", Napi::Function::New(env, RemoveFile, "removeFile"));
  return exports;
}

}  // namespace

NODE_API_MODULE(vmplug_fsio, Init)
