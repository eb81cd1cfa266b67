// The control socket's server against a fake handler: requests and
// replies, every kind of bad request, partial lines and vanishing clients,
// the bounds (line length, clients, unread replies), who may connect, and
// many clients at once.
#include "serve/control_server.h"

#include <fmt/format.h>
#include <grp.h>
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "blkstack/error.h"

namespace blkstack::serve {
namespace {

using nlohmann::json;

std::string TempSocketPath() {
  static std::atomic<int> n{0};
  return fmt::format("/tmp/blkstack-ctl-test-{}-{}.sock", getpid(), n++);
}

// Echoes its args under "echo"; verb "boom" throws, "unknown" is unknown.
json FakeHandler(const ControlRequest& req) {
  if (req.verb == "hello") return {{"protocol", kControlProtocolVersion}};
  if (req.verb == "echo") return {{"echo", req.args}};
  if (req.verb == "boom") throw std::runtime_error("it broke");
  if (req.verb == "missing") throw ControlError(control_code::kNotFound, "no such thing");
  throw ControlError(control_code::kUnknownVerb, "unknown verb '" + req.verb + "'");
}

ControlServerOptions Options(const std::string& path) {
  ControlServerOptions o;
  o.path = path;
  return o;
}

int Connect(const std::string& path) {
  const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    const int err = errno;
    close(fd);
    errno = err;
    return -1;
  }
  timeval tv{10, 0};  // a hung server fails the test instead of hanging it
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  return fd;
}

void Send(int fd, std::string_view data) {
  while (!data.empty()) {
    const ssize_t n = send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n <= 0) return;  // cut off: the caller checks what it reads
    data.remove_prefix(static_cast<size_t>(n));
  }
}

// One reply line, or "" at end of file.
std::string ReadLine(int fd, std::string& buf) {
  for (;;) {
    if (size_t nl = buf.find('\n'); nl != std::string::npos) {
      std::string line = buf.substr(0, nl);
      buf.erase(0, nl + 1);
      return line;
    }
    char tmp[4096];
    const ssize_t n = recv(fd, tmp, sizeof(tmp), 0);
    if (n <= 0) return "";
    buf.append(tmp, static_cast<size_t>(n));
  }
}

struct Client {
  explicit Client(const std::string& path) : fd(Connect(path)) {}
  ~Client() {
    if (fd >= 0) close(fd);
  }
  ControlReply Call(std::string_view line) {
    Send(fd, line);
    const std::string reply = ReadLine(fd, buf);
    if (reply.empty()) throw std::runtime_error("connection closed");
    return parse_control_reply(reply);
  }
  std::string ErrorCode(std::string_view line) {
    ControlReply r = Call(line);
    return r.error ? r.error->code() : "";
  }
  bool AtEof() { return ReadLine(fd, buf).empty(); }
  int fd;
  std::string buf;
};

class ControlServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    Start([](ControlServerOptions&) {});
  }
  void Start(const std::function<void(ControlServerOptions&)>& tweak) {
    server_.reset();
    ControlServerOptions opt = Options(path_);
    tweak(opt);
    server_ = std::make_unique<ControlServer>(opt, FakeHandler);
  }
  std::string path_ = TempSocketPath();
  std::unique_ptr<ControlServer> server_;
};

TEST_F(ControlServerTest, AnswersRequestsWithTheirIds) {
  Client c(path_);
  ASSERT_GE(c.fd, 0);
  ControlReply r = c.Call(R"({"id":1,"verb":"hello"})"
                          "\n");
  EXPECT_EQ(r.id, 1);
  ASSERT_FALSE(r.error);
  EXPECT_EQ(r.result["protocol"], 1);
  r = c.Call(R"({"id":"two","verb":"echo","args":{"x":[1,2]}})"
             "\n");
  EXPECT_EQ(r.id, "two");
  EXPECT_EQ(r.result["echo"]["x"][1], 2);
}

TEST_F(ControlServerTest, SocketIsOwnerOnly) {
  struct stat st;
  ASSERT_EQ(stat(path_.c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  Start([](ControlServerOptions& o) { o.mode = 0660; });
  ASSERT_EQ(stat(path_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0660u);
}

TEST_F(ControlServerTest, EveryBadRequestGetsItsErrorAndTheConnectionGoesOn) {
  Client c(path_);
  EXPECT_EQ(c.ErrorCode("this is not json\n"), "bad_request");
  EXPECT_EQ(c.ErrorCode("[1,2,3]\n"), "bad_request");
  EXPECT_EQ(c.ErrorCode(R"({"id":1})"
                        "\n"),
            "bad_request");
  EXPECT_EQ(c.ErrorCode(R"({"verb":"echo","args":7})"
                        "\n"),
            "bad_request");
  EXPECT_EQ(c.ErrorCode("{\"verb\":\"\xff\"}\n"), "bad_request");
  EXPECT_EQ(c.ErrorCode(std::string(100000, '[') + "\n"), "too_long");
  // too_long closes the connection; the rest on a new one.
  EXPECT_TRUE(c.AtEof());
  Client d(path_);
  EXPECT_EQ(d.ErrorCode(std::string(1000, '[') + "\n"), "bad_request");  // too deep
  EXPECT_EQ(d.ErrorCode(R"({"id":5,"verb":"frobnicate"})"
                        "\n"),
            "unknown_verb");
  EXPECT_EQ(d.ErrorCode(R"({"verb":"missing"})"
                        "\n"),
            "not_found");
  ControlReply r = d.Call(R"({"id":6,"verb":"boom"})"
                          "\n");
  ASSERT_TRUE(r.error);
  EXPECT_EQ(r.error->code(), "failed");
  EXPECT_STREQ(r.error->what(), "it broke");
  EXPECT_EQ(r.id, 6);
  EXPECT_EQ(d.ErrorCode(R"({"verb":"hello"})"
                        "\n"),
            "");
}

TEST_F(ControlServerTest, ErrorsKeepTheIdWhenThereIsOne) {
  Client c(path_);
  ControlReply r = c.Call(R"({"id":"abc","verb":3})"
                          "\n");
  EXPECT_EQ(r.id, "abc");
  r = c.Call("garbage\n");
  EXPECT_TRUE(r.id.is_null());
}

TEST_F(ControlServerTest, LineSplitAcrossWritesAndSeveralInOne) {
  Client c(path_);
  const std::string line = R"({"id":9,"verb":"echo","args":{"s":"abcdef"}})"
                           "\n";
  for (char ch : line) Send(c.fd, std::string_view(&ch, 1));
  ControlReply r = parse_control_reply(ReadLine(c.fd, c.buf));
  EXPECT_EQ(r.id, 9);
  Send(c.fd, R"({"id":1,"verb":"hello"})"
             "\n"
             R"({"id":2,"verb":"hello"})"
             "\n"
             R"({"id":3,"verb":"hello"})"
             "\n");
  for (int id = 1; id <= 3; ++id)
    EXPECT_EQ(parse_control_reply(ReadLine(c.fd, c.buf)).id, id);
}

TEST_F(ControlServerTest, LongestLineIsServed) {
  Client c(path_);
  std::string line = R"({"id":1,"verb":"echo","args":{"s":")";
  line.append(kMaxControlLine - line.size() - 3, 'x');
  line += "\"}}";
  ASSERT_EQ(line.size(), kMaxControlLine);
  ControlReply r = c.Call(line + "\n");
  ASSERT_FALSE(r.error) << r.error->what();
  EXPECT_EQ(r.result["echo"]["s"].get<std::string>().size(), kMaxControlLine - 38);
}

TEST_F(ControlServerTest, ClientVanishingMidRequestLeavesOthersServed) {
  for (int i = 0; i < 20; ++i) {
    Client gone(path_);
    Send(gone.fd, R"({"id":1,"verb":"echo","ar)");
    // Closed by its destructor without ever ending the line.
  }
  {
    Client rude(path_);
    Send(rude.fd, R"({"id":1,"verb":"echo"})"
                  "\n");
    shutdown(rude.fd, SHUT_RDWR);  // its reply has nowhere to go
  }
  Client c(path_);
  EXPECT_EQ(c.ErrorCode(R"({"verb":"hello"})"
                        "\n"),
            "");
  for (int i = 0; i < 100 && server_->clients() > 1; ++i) usleep(10000);
  EXPECT_EQ(server_->clients(), 1u);
}

TEST_F(ControlServerTest, TooManyClientsAreTurnedAway) {
  Start([](ControlServerOptions& o) { o.max_clients = 2; });
  Client a(path_), b(path_);
  EXPECT_EQ(a.ErrorCode(R"({"verb":"hello"})"
                        "\n"),
            "");
  EXPECT_EQ(b.ErrorCode(R"({"verb":"hello"})"
                        "\n"),
            "");
  Client c(path_);
  std::string line = ReadLine(c.fd, c.buf);
  ASSERT_FALSE(line.empty());
  ControlReply r = parse_control_reply(line);
  ASSERT_TRUE(r.error);
  EXPECT_EQ(r.error->code(), "busy");
  EXPECT_TRUE(c.AtEof());
  EXPECT_EQ(a.ErrorCode(R"({"verb":"hello"})"
                        "\n"),
            "");
}

TEST_F(ControlServerTest, ClientThatNeverReadsIsCutOff) {
  Start([](ControlServerOptions& o) { o.max_output = 64 << 10; });
  Client hog(path_);
  // Requests whose replies are big: far more than the socket buffers and
  // the bound together. The server must cut it off, not grow or block.
  std::string req = R"({"verb":"echo","args":{"s":")" + std::string(8000, 'y') + "\"}}\n";
  std::thread writer([&] {
    for (int i = 0; i < 2000; ++i) Send(hog.fd, req);
  });
  Client c(path_);  // meanwhile others are served
  EXPECT_EQ(c.ErrorCode(R"({"verb":"hello"})"
                        "\n"),
            "");
  writer.join();  // returns: its sends fail once it is cut off
  for (int i = 0; i < 200 && server_->clients() > 1; ++i) usleep(10000);
  EXPECT_EQ(server_->clients(), 1u);
  EXPECT_EQ(c.ErrorCode(R"({"verb":"hello"})"
                        "\n"),
            "");
}

// CPU time this process has used, in ms.
double CpuMs() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e3 +
         (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e3;
}

// Out of descriptors, a waiting client cannot be accepted: the server
// waits for one to free up instead of spinning on the listening socket,
// and then serves it.
TEST_F(ControlServerTest, OutOfDescriptorsTheServerWaitsAndThenAccepts) {
  rlimit old{};
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &old), 0);
  const int probe = dup(0);
  ASSERT_GE(probe, 0);
  close(probe);
  const int client_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(client_fd, 0);
  // Every descriptor from here to the new limit taken.
  rlimit low = old;
  low.rlim_cur = static_cast<rlim_t>(std::max(probe, client_fd) + 8);
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &low), 0);
  std::vector<int> hogs;
  for (int fd; (fd = dup(0)) >= 0;) hogs.push_back(fd);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path_.c_str(), sizeof(addr.sun_path) - 1);
  ASSERT_EQ(connect(client_fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  const double before = CpuMs();
  usleep(300000);
  const double spent = CpuMs() - before;
  for (int fd : hogs) close(fd);
  setrlimit(RLIMIT_NOFILE, &old);
  EXPECT_LT(spent, 50.0) << "the server spun while it could not accept";
  // With descriptors back, the client is served.
  timeval tv{10, 0};
  setsockopt(client_fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  Send(client_fd, R"({"id":7,"verb":"hello"})"
                  "\n");
  std::string buf;
  const std::string line = ReadLine(client_fd, buf);
  close(client_fd);
  ASSERT_FALSE(line.empty());
  EXPECT_FALSE(parse_control_reply(line).error);
}

TEST_F(ControlServerTest, ManyClientsAtOnce) {
  constexpr int kClients = 32, kRequests = 50;
  std::atomic<int> good{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kClients; ++t) {
    threads.emplace_back([&, t] {
      Client c(path_);
      for (int i = 0; i < kRequests; ++i) {
        const int id = t * 1000 + i;
        ControlReply r = c.Call(
            json{{"id", id}, {"verb", "echo"}, {"args", {{"t", t}}}}.dump() + "\n");
        if (!r.error && r.id == id && r.result["echo"]["t"] == t) good++;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(good.load(), kClients * kRequests);
}

TEST_F(ControlServerTest, StopRemovesTheSocket) {
  server_->stop();
  EXPECT_NE(access(path_.c_str(), F_OK), 0);
  server_->stop();  // idempotent
}

TEST_F(ControlServerTest, StaleSocketIsReplacedLiveOneAndFilesAreNot) {
  // Another server listening there: refused.
  EXPECT_THROW(ControlServer(Options(path_), FakeHandler), Error);
  EXPECT_EQ(Client(path_).ErrorCode(R"({"verb":"hello"})"
                                    "\n"),
            "");
  // A stale socket (bound, nobody listening): replaced.
  server_.reset();
  const int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path_.c_str(), sizeof(addr.sun_path) - 1);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  close(fd);
  Start([](ControlServerOptions&) {});
  EXPECT_EQ(Client(path_).ErrorCode(R"({"verb":"hello"})"
                                    "\n"),
            "");
  // A regular file: refused, and left alone.
  server_.reset();
  std::ofstream(path_) << "precious";
  EXPECT_THROW(ControlServer(Options(path_), FakeHandler), Error);
  std::ifstream in(path_);
  std::string content;
  in >> content;
  EXPECT_EQ(content, "precious");
  unlink(path_.c_str());
}

// Forks a child that becomes `nobody` and tries the socket; returns what it
// saw: "connect-refused", "denied" (an error reply, then closed) or
// "served".
// With `groups`, those are its supplementary groups; without, it keeps
// ours.
std::string TryAsNobody(const std::string& path,
                        std::optional<std::vector<gid_t>> groups = std::nullopt) {
  int pipefd[2];
  if (pipe(pipefd) != 0) return "pipe";
  const pid_t pid = fork();
  if (pid == 0) {
    close(pipefd[0]);
    std::string what = "setuid-failed";
    if ((!groups || setgroups(groups->size(), groups->data()) == 0) &&
        setgid(65534) == 0 && setuid(65534) == 0) {
      Client c(path);
      if (c.fd < 0) {
        what = errno == EACCES ? "connect-refused" : "connect-error";
      } else {
        Send(c.fd, R"({"verb":"hello"})"
                   "\n");
        const std::string line = ReadLine(c.fd, c.buf);
        try {
          ControlReply r = parse_control_reply(line);
          what = r.error && c.AtEof() ? "denied" : "served";
        } catch (...) {
          what = "no-reply";
        }
      }
    }
    [[maybe_unused]] ssize_t n = write(pipefd[1], what.data(), what.size());
    _exit(0);
  }
  close(pipefd[1]);
  char buf[64] = {};
  [[maybe_unused]] ssize_t n = read(pipefd[0], buf, sizeof(buf) - 1);
  close(pipefd[0]);
  waitpid(pid, nullptr, 0);
  return buf;
}

TEST_F(ControlServerTest, AnotherUserIsRefused) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to become another user";
  // The mode keeps it out...
  EXPECT_EQ(TryAsNobody(path_), "connect-refused");
  // ...and with the socket open to all, its credentials still do.
  Start([](ControlServerOptions& o) { o.mode = 0666; });
  EXPECT_EQ(TryAsNobody(path_), "denied");
  EXPECT_EQ(Client(path_).ErrorCode(R"({"verb":"hello"})"
                                    "\n"),
            "");
}

// control_mode = "0660": the socket's group may use it, whether that is
// a member's primary group or one of its supplementary groups (as the
// kernel's own check on the socket file counts them).
TEST_F(ControlServerTest, GroupMembersMayUseAGroupWritableSocket) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to become another user";
  Start([](ControlServerOptions& o) { o.mode = 0660; });
  struct stat st;
  ASSERT_EQ(stat(path_.c_str(), &st), 0);
  EXPECT_EQ(TryAsNobody(path_, std::vector<gid_t>{st.st_gid}), "served");
  // Not a member: the mode keeps it out.
  EXPECT_EQ(TryAsNobody(path_, std::vector<gid_t>{}), "connect-refused");
}

}  // namespace
}  // namespace blkstack::serve
