// Device specs: the syntax TYPE[:POSITIONAL][,KEY=VALUE...], the option table
// checks of DeviceOptions, the value parsers, and the errors of
// DiskRegistry::create. Every mistake must be an Error that quotes the spec
// and names the bad part, so the message is what most tests check.
#include "blkstack/device_spec.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <limits>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "blkstack/block_handle.h"
#include "blkstack/disk.h"
#include "blkstack/disk_registry.h"
#include "blkstack/driver/driver_type.h"
#include "blkstack/driver/queue_mode.h"
#include "blkstack/error.h"
#include "test_util.h"

namespace blkstack {
namespace {

using testing_util::Contains;
using testing_util::ErrorOf;

constexpr uint64_t kKiB = 1024;
constexpr uint64_t kMiB = kKiB << 10;
constexpr uint64_t kGiB = kMiB << 10;
constexpr uint64_t kTiB = kGiB << 10;
constexpr uint64_t kPiB = kTiB << 10;
constexpr uint64_t kEiB = kPiB << 10;
constexpr uint64_t kMax = std::numeric_limits<uint64_t>::max();

std::string SpecError(std::string_view text) {
  return ErrorOf([&] { parse_device_spec(text); });
}

// --- parse_device_spec ----------------------------------------------------

TEST(DeviceSpecParse, TypeAlone) {
  DeviceSpec s = parse_device_spec("ram");
  EXPECT_EQ(s.text, "ram");
  EXPECT_EQ(s.type, "ram");
  EXPECT_EQ(s.positional, "");
  EXPECT_TRUE(s.options.empty());
}

TEST(DeviceSpecParse, PositionalAndOptionsInOrder) {
  DeviceSpec s = parse_device_spec("ram:64M,bs=4096,name=scratch");
  EXPECT_EQ(s.type, "ram");
  EXPECT_EQ(s.positional, "64M");
  ASSERT_EQ(s.options.size(), 2u);
  EXPECT_EQ(s.options[0], (std::pair<std::string, std::string>{"bs", "4096"}));
  EXPECT_EQ(s.options[1], (std::pair<std::string, std::string>{"name", "scratch"}));
}

TEST(DeviceSpecParse, OptionsWithoutPositional) {
  DeviceSpec s = parse_device_spec("null,size=1G,completion=deferred");
  EXPECT_EQ(s.positional, "");
  ASSERT_EQ(s.options.size(), 2u);
  EXPECT_EQ(s.options[0].first, "size");
  EXPECT_EQ(s.options[1].first, "completion");
}

// The issue's own example: KEY=VALUE straight after ':' is an option.
TEST(DeviceSpecParse, KeyValueAfterColonIsAnOption) {
  DeviceSpec s = parse_device_spec("null:size=1G,completion=deferred,latency_ns=20000");
  EXPECT_EQ(s.type, "null");
  EXPECT_EQ(s.positional, "");
  ASSERT_EQ(s.options.size(), 3u);
  EXPECT_EQ(s.options[0], (std::pair<std::string, std::string>{"size", "1G"}));
  EXPECT_EQ(s.options[1],
            (std::pair<std::string, std::string>{"completion", "deferred"}));
  EXPECT_EQ(s.options[2], (std::pair<std::string, std::string>{"latency_ns", "20000"}));
  EXPECT_EQ(parse_device_spec("null:size=1G").options.size(), 1u);
}

TEST(DeviceSpecParse, PositionalPathMayContainEquals) {
  DeviceSpec s = parse_device_spec("file:/srv/a=b.img,direct=1");
  EXPECT_EQ(s.positional, "/srv/a=b.img");
  ASSERT_EQ(s.options.size(), 1u);
  EXPECT_EQ(s.options[0].first, "direct");
}

TEST(DeviceSpecParse, TypeAndKeysAreCaseInsensitiveValuesAreNot) {
  DeviceSpec s = parse_device_spec("RAM:64M,Name=Scratch");
  EXPECT_EQ(s.type, "ram");
  EXPECT_EQ(s.text, "RAM:64M,Name=Scratch") << "the text is kept as given, for messages";
  ASSERT_EQ(s.options.size(), 1u);
  EXPECT_EQ(s.options[0].first, "name");
  EXPECT_EQ(s.options[0].second, "Scratch");
}

TEST(DeviceSpecParse, ValueMayContainEqualsAndColon) {
  DeviceSpec s = parse_device_spec("x,uri=nbd://h:1/e?a=b");
  ASSERT_EQ(s.options.size(), 1u);
  EXPECT_EQ(s.options[0].second, "nbd://h:1/e?a=b");
}

TEST(DeviceSpecParse, Errors) {
  // Each: the spec, and the words the message must contain besides it.
  struct Case {
    const char* spec;
    const char* says;
  } cases[] = {
      {"", "empty"},
      {":64M", "device type"},
      {",size=1M", "device type"},
      {"r@m:1M", "device type"},
      {"ram:", "nothing after ':'"},
      {"ram:,bs=512", "nothing after ':'"},
      {"ram:1M,,bs=512", "empty option"},
      {"ram,,bs=512", "empty option"},
      {"ram:1M,", "trailing comma"},
      {"ram:1M,ro", "option 'ro' has no value"},
      {"ram:1M,bs=512,ro", "option 'ro' has no value"},
      {"ram:1M,bs=1,bs=2", "option 'bs' given twice"},
      {"ram:1M,BS=1,bs=2", "option 'bs' given twice"},
      {"ram:1M,=5", "bad option name ''"},
      {"ram:1M,b s=5", "bad option name 'b s'"},
  };
  for (const Case& c : cases) {
    std::string msg = SpecError(c.spec);
    EXPECT_TRUE(Contains(msg, "device spec '" + std::string(c.spec) + "'")) << c.spec;
    EXPECT_TRUE(Contains(msg, c.says)) << c.spec;
  }
}

// --- DeviceOptions ---------------------------------------------------------

constexpr OptionDef kTable[] = {
    {"size", OptionKind::kSize, "64M", "capacity", {}, true},
    {"count", OptionKind::kUint, "3", "a count"},
    {"fast", OptionKind::kBool, "0", "a flag"},
    {"mode", OptionKind::kChoice, "a", "a choice", "a|bb|ccc"},
    {"delay", OptionKind::kDuration, "1ms", "a duration"},
    {"label", OptionKind::kString, "", "a string without default"},
};

DeviceOptions Options(std::string_view text) {
  return DeviceOptions(parse_device_spec(text), kTable);
}

std::string OptionsError(std::string_view text) {
  return ErrorOf([&] { Options(text); });
}

TEST(DeviceOptions, DefaultsApplyWhenNotGiven) {
  DeviceOptions o = Options("t");
  EXPECT_EQ(o.size("size"), 64 * kMiB);
  EXPECT_EQ(o.uint("count"), 3u);
  EXPECT_FALSE(o.flag("fast"));
  EXPECT_EQ(o.str("mode"), "a");
  EXPECT_EQ(o.duration_ns("delay"), 1'000'000u);
  for (const char* key : {"size", "count", "fast", "mode", "delay", "label"}) {
    EXPECT_FALSE(o.given(key)) << key;
  }
  // No default and not given: asking for it is a clear error.
  std::string msg = ErrorOf([&] { o.str("label"); });
  EXPECT_TRUE(Contains(msg, "'label'"));
  EXPECT_TRUE(Contains(msg, "required"));
}

TEST(DeviceOptions, GivenValuesOverrideDefaults) {
  DeviceOptions o = Options("t:1G,count=7,fast=yes,mode=ccc,delay=20us,label=x");
  EXPECT_EQ(o.size("size"), kGiB);
  EXPECT_EQ(o.uint("count"), 7u);
  EXPECT_TRUE(o.flag("fast"));
  EXPECT_EQ(o.str("mode"), "ccc");
  EXPECT_EQ(o.duration_ns("delay"), 20'000u);
  EXPECT_EQ(o.str("label"), "x");
  for (const char* key : {"size", "count", "fast", "mode", "delay", "label"}) {
    EXPECT_TRUE(o.given(key)) << key;
  }
  EXPECT_EQ(o.spec().positional, "1G");
  EXPECT_EQ(Options("t,size=2M").size("size"), 2 * kMiB);
  EXPECT_EQ(Options("t:size=3M").size("size"), 3 * kMiB);
}

TEST(DeviceOptions, UnknownKeyIsNamedWithTheValidKeys) {
  std::string msg = OptionsError("t:1M,colour=red");
  EXPECT_TRUE(Contains(msg, "device spec 't:1M,colour=red'"));
  EXPECT_TRUE(Contains(msg, "unknown option 'colour' for type 't'"));
  EXPECT_TRUE(Contains(msg, "valid: size, count, fast, mode, delay, label"));
}

TEST(DeviceOptions, BadValuesAreNamed) {
  struct Case {
    const char* spec;
    const char* key;
    const char* value;
  } cases[] = {
      {"t:12Q", "size", "12Q"},          {"t,size=1.5M", "size", "1.5M"},
      {"t,count=-1", "count", "-1"},     {"t,count=1K", "count", "1K"},
      {"t,fast=maybe", "fast", "maybe"}, {"t,fast=", "fast", ""},
      {"t,mode=dd", "mode", "dd"},       {"t,mode=b", "mode", "b"},
      {"t,mode=A", "mode", "A"},         {"t,mode=", "mode", ""},
      {"t,delay=5h", "delay", "5h"},     {"t,delay=1.5ms", "delay", "1.5ms"},
  };
  for (const Case& c : cases) {
    std::string msg = OptionsError(c.spec);
    EXPECT_TRUE(Contains(msg, "device spec '" + std::string(c.spec) + "'")) << c.spec;
    EXPECT_TRUE(Contains(msg, "'" + std::string(c.key) + "'")) << c.spec;
    EXPECT_TRUE(Contains(msg, "'" + std::string(c.value) + "'")) << c.spec;
  }
  EXPECT_TRUE(Contains(OptionsError("t,mode=dd"), "a|bb|ccc")) << "choices are listed";
  EXPECT_TRUE(Contains(OptionsError("t,label="), "empty value for 'label'"));
}

TEST(DeviceOptions, ChoicesMatchWholeWords) {
  EXPECT_EQ(Options("t,mode=bb").str("mode"), "bb");
  EXPECT_EQ(Options("t,mode=a").str("mode"), "a");
  EXPECT_FALSE(OptionsError("t,mode=cc").empty());
  EXPECT_FALSE(OptionsError("t,mode=a|bb").empty());
}

TEST(DeviceOptions, PositionalConflicts) {
  std::string msg = OptionsError("t:1G,size=2G");
  EXPECT_TRUE(Contains(msg, "'size' given both after ':' and as an option"));

  static constexpr OptionDef kNoPositional[] = {
      {"count", OptionKind::kUint, "3", "a count"},
  };
  msg = ErrorOf([] { DeviceOptions(parse_device_spec("u:5"), kNoPositional); });
  EXPECT_TRUE(Contains(msg, "type 'u' takes no value after ':'"));
}

// A broken default in a driver's table is caught when options are built,
// not when a driver happens to read it.
TEST(DeviceOptions, DefaultsAreValidatedToo) {
  static constexpr OptionDef kBadDefault[] = {
      {"size", OptionKind::kSize, "lots", "capacity"},
  };
  std::string msg = ErrorOf([] { DeviceOptions(parse_device_spec("t"), kBadDefault); });
  EXPECT_TRUE(Contains(msg, "'size'"));
  EXPECT_TRUE(Contains(msg, "'lots'"));
}

// --- value parsers ---------------------------------------------------------

TEST(ParseSize, PlainAndSuffixed) {
  EXPECT_EQ(parse_size("0"), 0u);
  EXPECT_EQ(parse_size("4096"), 4096u);
  EXPECT_EQ(parse_size("1B"), 1u);
  struct Unit {
    const char* letter;
    uint64_t scale;
  } units[] = {{"K", kKiB}, {"M", kMiB}, {"G", kGiB},
               {"T", kTiB}, {"P", kPiB}, {"E", kEiB}};
  for (const Unit& u : units) {
    for (const char* tail : {"", "B", "iB"}) {
      for (bool lower : {false, true}) {
        std::string text = std::string("3") + u.letter + tail;
        if (lower) {
          for (char& c : text) c = static_cast<char>(std::tolower(c));
        }
        if (u.scale == kEiB) {
          EXPECT_EQ(parse_size(text), 3 * kEiB) << text;
        } else {
          EXPECT_EQ(parse_size(text), 3 * u.scale) << text;
        }
      }
    }
  }
}

TEST(ParseSize, Overflow) {
  EXPECT_EQ(parse_size("18446744073709551615"), kMax);
  EXPECT_EQ(parse_size("15E"), 15 * kEiB);
  EXPECT_EQ(parse_size("16383P"), 16383 * kPiB);
  for (const char* text : {"18446744073709551616", "99999999999999999999999", "16E",
                           "16384P", "17179869184G", "18014398509481984K"}) {
    std::string msg = ErrorOf([&] { parse_size(text); });
    EXPECT_TRUE(Contains(msg, "too large")) << text;
    EXPECT_TRUE(Contains(msg, std::string("'") + text + "'")) << text;
  }
}

TEST(ParseSize, Malformed) {
  for (const char* text : {"", "K", "M1", "-1", "+1", " 1", "1 ", "1 K", "1.5M", "0x10",
                           "1Ki", "1KiBs", "1X", "1iB", "1BB", "1KK"}) {
    std::string msg = ErrorOf([&] { parse_size(text, "block size"); });
    EXPECT_TRUE(Contains(msg, std::string("bad block size '") + text + "'")) << text;
  }
}

TEST(ParseDuration, UnitsAndOverflow) {
  EXPECT_EQ(parse_duration_ns("0"), 0u);
  EXPECT_EQ(parse_duration_ns("20000"), 20'000u);
  EXPECT_EQ(parse_duration_ns("20ns"), 20u);
  EXPECT_EQ(parse_duration_ns("20us"), 20'000u);
  EXPECT_EQ(parse_duration_ns("20US"), 20'000u);
  EXPECT_EQ(parse_duration_ns("3ms"), 3'000'000u);
  EXPECT_EQ(parse_duration_ns("2s"), 2'000'000'000u);
  EXPECT_EQ(parse_duration_ns("18446744073s"), 18'446'744'073'000'000'000u);
  EXPECT_TRUE(Contains(ErrorOf([] { parse_duration_ns("18446744074s"); }), "too large"));
  EXPECT_TRUE(
      Contains(ErrorOf([] { parse_duration_ns("18446744073709551616"); }), "too large"));
  for (const char* text : {"", "us", "1m", "1h", "1.5ms", "-1", "1 s", "1sec"}) {
    std::string msg = ErrorOf([&] { parse_duration_ns(text, "latency"); });
    EXPECT_TRUE(Contains(msg, std::string("bad latency '") + text + "'")) << text;
  }
}

TEST(ParseBool, AcceptedSpellings) {
  for (const char* t : {"1", "true", "yes", "on", "TRUE", "Yes", "ON"}) {
    EXPECT_TRUE(parse_bool(t)) << t;
  }
  for (const char* f : {"0", "false", "no", "off", "False", "NO", "Off"}) {
    EXPECT_FALSE(parse_bool(f)) << f;
  }
  for (const char* bad : {"", "2", "y", "n", "enable", "01"}) {
    EXPECT_TRUE(Contains(ErrorOf([&] { parse_bool(bad, "ro"); }),
                         std::string("bad ro '") + bad + "'"))
        << bad;
  }
}

TEST(ParseUint, RangeAndMalformed) {
  EXPECT_EQ(parse_uint("0"), 0u);
  EXPECT_EQ(parse_uint("42"), 42u);
  EXPECT_EQ(parse_uint("18446744073709551615"), kMax);
  EXPECT_TRUE(Contains(ErrorOf([] { parse_uint("18446744073709551616"); }), "too large"));
  for (const char* bad : {"", "1K", "+1", "-1", "1.0", " 1", "x"}) {
    EXPECT_TRUE(Contains(ErrorOf([&] { parse_uint(bad, "count"); }),
                         std::string("bad count '") + bad + "'"))
        << bad;
  }
}

TEST(FormatSize, UnitsAndFractions) {
  EXPECT_EQ(format_size(0), "0 B");
  EXPECT_EQ(format_size(512), "512 B");
  EXPECT_EQ(format_size(1023), "1023 B");
  EXPECT_EQ(format_size(kKiB), "1 KiB");
  EXPECT_EQ(format_size(1536), "1.5 KiB");
  EXPECT_EQ(format_size(64 * kMiB), "64 MiB");
  EXPECT_EQ(format_size(kGiB + kGiB / 2), "1.5 GiB");
  EXPECT_EQ(format_size(kTiB), "1 TiB");
  EXPECT_EQ(format_size(2 * kPiB), "2 PiB");
  EXPECT_EQ(format_size(3 * kEiB), "3 EiB");
}

// What format_size prints for a whole number of units, parse_size reads
// back (without the space), so sizes can travel through logs and configs.
TEST(FormatSize, WholeUnitsRoundTripThroughParseSize) {
  for (uint64_t v : {uint64_t{0}, uint64_t{512}, kKiB, 4 * kKiB, 64 * kMiB, 3 * kGiB,
                     kTiB, 7 * kPiB, 15 * kEiB}) {
    std::string text = format_size(v);
    text.erase(text.find(' '), 1);
    EXPECT_EQ(parse_size(text), v) << format_size(v);
  }
}

// --- DiskRegistry::create ----------------------------------------------------

std::string CreateError(std::string_view spec) {
  DiskRegistry registry;
  std::string msg = ErrorOf([&] { registry.create(spec); });
  EXPECT_TRUE(registry.list().empty()) << spec << ": a failed create left a disk behind";
  EXPECT_TRUE(Contains(msg, "'" + std::string(spec) + "'")) << "the spec is quoted";
  return msg;
}

TEST(DeviceSpecCreate, UnknownTypeListsTheKnownTypes) {
  std::string msg = CreateError("rom:1M");
  EXPECT_TRUE(Contains(msg, "unknown device type 'rom'"));
  for (const DriverType* t : driver_types()) {
    EXPECT_TRUE(Contains(msg, t->name)) << "known types are listed";
  }
  std::string known;
  for (const DriverType* t : driver_types()) {
    known += (known.empty() ? "" : ", ") + std::string(t->name);
  }
  EXPECT_TRUE(Contains(msg, "(known: " + known + ")"));
}

TEST(DeviceSpecCreate, DriverOptionErrorsNameThePart) {
  std::string msg = CreateError("ram:1M,foo=1");
  EXPECT_TRUE(Contains(msg, "unknown option 'foo' for type 'ram'"));
  // The valid keys are listed: the driver's own and the common name= and ro=.
  EXPECT_TRUE(Contains(msg, "valid: size, bs, max_sectors"));
  for (const OptionDef& d : find_driver_type("ram")->options)
    EXPECT_TRUE(Contains(msg, d.key));
  for (const OptionDef& d : common_device_options()) EXPECT_TRUE(Contains(msg, d.key));

  EXPECT_TRUE(Contains(CreateError("null:1G,completion=later"), "'later'"));
  EXPECT_TRUE(Contains(CreateError("null:1G,completion=later"), "inline|deferred|timer"));
  EXPECT_TRUE(Contains(CreateError("null:1G,latency_ns=fast"), "'latency_ns'"));
  EXPECT_TRUE(Contains(CreateError("ram:1M,ro=maybe"), "'ro'"));
  EXPECT_TRUE(Contains(CreateError("ram:1M,name="), "'name'"));
  EXPECT_TRUE(Contains(CreateError("ram:1M,size=2M"), "'size'"));
  EXPECT_TRUE(Contains(CreateError("ram:64Q"), "'64Q'"));
  EXPECT_TRUE(Contains(CreateError("null,wc=2"), "'wc'"));
}

TEST(DeviceSpecCreate, SizeMustBeAPositiveMultipleOfTheBlockSize) {
  EXPECT_TRUE(Contains(CreateError("ram:1000"), "block size"));
  EXPECT_TRUE(Contains(CreateError("ram:0"), "valid: 512 B to 1 PiB"));
  EXPECT_TRUE(Contains(CreateError("ram:6K,bs=4096"), "block size 4096"));
  EXPECT_TRUE(Contains(CreateError("null:1000"), "block size"));
}

// Block sizes that do not fit the limits, including ones that would divide
// by zero or wrap around in 32 bits, are refused by name.
TEST(DeviceSpecCreate, BadBlockSizesAreRefused) {
  for (const char* type : {"ram", "null"}) {
    for (const char* bs : {"0", "1", "1000", "256", "128K", "4294967808", "16E"}) {
      std::string spec = std::string(type) + ":1M,bs=" + bs;
      std::string msg = CreateError(spec);
      EXPECT_TRUE(Contains(msg, "bs") || Contains(msg, "block size"))
          << spec << ": " << msg;
    }
  }
}

// Sizes past what a driver can serve are refused with the valid range:
// ram:8E used to end in std::bad_alloc, ram:1P in a 4 GiB zero-filled
// table. The RAM disk's largest size costs address space, not memory.
TEST(DeviceSpecCreate, SizesPastWhatCanBeServedAreRefusedWithTheRange) {
  for (const char* spec :
       {"ram:8E", "ram:2P", "ram:1E", "ram:size=18446744073709551615"}) {
    const std::string msg = CreateError(spec);
    EXPECT_TRUE(Contains(msg, "'size'")) << msg;
    EXPECT_TRUE(Contains(msg, "valid: 512 B to 1 PiB")) << msg;
  }
  for (const char* spec : {"null:8E", "null:5E", "file:/nonexistent/x,size=8E"}) {
    EXPECT_TRUE(Contains(CreateError(spec), "valid: 512 B to 4 EiB")) << spec;
  }
  const auto start = std::chrono::steady_clock::now();
  {
    DiskRegistry registry;
    auto disk = registry.create("ram:1P");
    EXPECT_EQ(disk->size_bytes(), uint64_t{1} << 50);
    BlockHandle h(disk);
    std::vector<std::byte> block(4096, std::byte{0x3c}), back(4096);
    ASSERT_EQ(h.pwrite(block.data(), block.size(), h.size() - 4096), Status::kOk);
    ASSERT_EQ(h.pread(back.data(), back.size(), h.size() - 4096), Status::kOk);
    EXPECT_EQ(back, block);
    EXPECT_TRUE(registry.create("null:4E"));
  }
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(2))
      << "making and freeing a sparse 1 PiB RAM disk should cost next to nothing";
}

// The shared queue options: 0, 2^32 (which narrowed to 0 in an unsigned)
// and 2^64-1 are refused with the range, never made into queues.
TEST(DeviceSpecCreate, QueueOptionsOutsideTheirRangeAreRefused) {
  const struct {
    const char* option;
    const char* range;
    std::vector<const char*> bad;  // besides the values every option refuses
  } cases[] = {
      {"hw_queues", "valid: 1 to 256", {"0", "257", "4294967296"}},
      {"depth", "valid: 1 to 10240", {"0", "10241", "4294967296"}},
      {"nomerges", "valid: 0 to 2", {"3", "4294967296"}},
      {"timeout", "valid: 1ms to 4294967295ms", {"0", "999999", "4294967296s"}},
  };
  for (const auto& c : cases) {
    std::vector<const char*> values = c.bad;
    for (const char* v : {"-1", "9223372036854775808", "18446744073709551615",
                          "18446744073709551616", "1E"})
      values.push_back(v);
    for (const char* v : values) {
      for (const char* type : {"null:1M", "ram:1M"}) {
        const std::string spec =
            std::string(type) + ",queue_mode=mq," + c.option + "=" + v;
        const std::string msg = CreateError(spec);
        EXPECT_TRUE(Contains(msg, std::string("'") + c.option + "'")) << msg;
        EXPECT_TRUE(Contains(msg, c.range)) << msg;
      }
    }
  }
  EXPECT_TRUE(Contains(CreateError("null:1M,completion_nsec=18446744073709551615"),
                       "valid: 0ns to 3600s"));
  DiskRegistry registry;
  EXPECT_TRUE(registry.create("null:1M,queue_mode=mq,hw_queues=256,depth=1,timeout=1ms"));
}

// Every numeric option of every driver, with values at and past the edges
// (0, negative, 2^32, 2^63, 2^64-1, 2^64, every size suffix, a unit where
// none belongs): each is taken, or refused with a message that names the
// option and, for a number, its valid range. (tests/integration/
// cli_bad_specs.sh runs a few of these through the program, where main
// turns the error into a message and exit 1.)
TEST(DeviceSpecCreate, EveryNumericOptionIsTakenOrRefusedWithItsRange) {
  char dir_template[] = "/tmp/blkstack-spec-edges.XXXXXX";
  ASSERT_NE(mkdtemp(dir_template), nullptr);
  const std::string img = std::string(dir_template) + "/img";
  // How each driver is made with everything else valid; `{}` is where the
  // option goes. The queue options are shared code: once, on null.
  const std::map<std::string_view, std::string> base = {
      {"null", "null:1M,{}"},
      {"ram", "ram:1M,{}"},
      {"model", "model:1M,{}"},
      {"file", "file:" + img + ",size=1M,{}"},
      {"passthrough", "passthrough:lower=ram0,{}"},  // over a ram:1M made first
  };
  const char* const edges[] = {"0",
                               "-1",
                               "4294967296",
                               "9223372036854775808",
                               "18446744073709551615",
                               "18446744073709551616",
                               "99999999999999999999999",
                               "1P",
                               "8E",
                               "16E",
                               "1ms",
                               "x"};
  auto check = [&](const std::string& spec, std::string_view key,
                   std::string_view value) {
    SCOPED_TRACE(spec);
    unlink(img.c_str());
    DiskRegistry registry;
    if (spec.starts_with("passthrough")) registry.create("ram:1M");
    try {
      registry.create(spec);
    } catch (const Error& e) {
      const std::string msg = e.what();
      EXPECT_TRUE(Contains(msg, "'" + std::string(key) + "'")) << msg;
      if (value != "x" && value != "-1") {
        EXPECT_TRUE(Contains(msg, "valid: ") || Contains(msg, "power of two from") ||
                    Contains(msg, "multiple of the block size") ||
                    Contains(msg, "cannot grow"))
            << "refused without the valid range: " << msg;
      }
    } catch (const std::exception& e) {
      ADD_FAILURE() << "not a blkstack::Error: " << e.what();
    }
  };
  for (const DriverType* type : driver_types()) {
    const auto it = base.find(type->name);
    if (it == base.end()) {
      ADD_FAILURE() << "driver '" << type->name << "': add how to make it to this test";
      continue;
    }
    std::vector<std::pair<const OptionDef*, std::string>> options;
    for (const OptionDef& d : type->options) options.emplace_back(&d, it->second);
    if (type->name == "null") {
      for (const OptionDef& d : queue_mode_options())
        options.emplace_back(&d, "null:1M,queue_mode=mq,{}");
    }
    for (const auto& [def, pattern] : options) {
      if (def->kind != OptionKind::kSize && def->kind != OptionKind::kUint &&
          def->kind != OptionKind::kDuration)
        continue;
      for (const char* v : edges) {
        std::string spec = pattern;
        spec.replace(spec.find("{}"), 2, std::string(def->key) + "=" + v);
        if (def->key == "size") {  // instead of the base's own size
          spec = type->name == "file" ? "file:" + img + ",size=" + v
                 : type->name == "passthrough"
                     ? "passthrough:lower=ram0,size=" + std::string(v)
                     : std::string(type->name) + ":size=" + v;
        }
        check(spec, def->key, v);
      }
    }
  }
  unlink(img.c_str());
  rmdir(dir_template);
}

// Each option in its range, the product need not be: hw_queues=256 with
// depth=10240 made a file disk of 2.6 million requests, 6.8 GB and 47 s to
// set up. The tags of all queues together are bounded too.
TEST(DeviceSpecCreate, AllQueuesTogetherHaveBoundedTags) {
  char dir_template[] = "/tmp/blkstack-total-tags.XXXXXX";
  ASSERT_NE(mkdtemp(dir_template), nullptr);
  const std::string img = std::string(dir_template) + "/img";
  const std::vector<std::string> too_many = {
      "null:1M,queue_mode=mq,hw_queues=256,depth=10240",
      "ram:1M,queue_mode=mq,hw_queues=7,depth=10240",
      "file:" + img + ",size=1M,hw_queues=256,depth=10240",
      "file:" + img + ",size=1M,hw_queues=1,poll_queues=64,depth=10240"};
  for (const std::string& spec : too_many) {
    const std::string msg = CreateError(spec);
    EXPECT_TRUE(Contains(msg, "'depth'")) << msg;
    EXPECT_TRUE(Contains(msg, "65536")) << msg;
  }
  DiskRegistry registry;
  EXPECT_TRUE(registry.create("null:1M,queue_mode=mq,hw_queues=256,depth=256"));
  EXPECT_TRUE(registry.create("null:1M,queue_mode=mq,hw_queues=6,depth=10240"));
  EXPECT_TRUE(
      registry.create("null:1M,queue_mode=mq,hw_queues=256,depth=10240,shared_tags=1"));
  unlink(img.c_str());
  rmdir(dir_template);
}

TEST(DeviceSpecCreate, BadMaxSectorsIsRefused) {
  EXPECT_TRUE(Contains(CreateError("ram:1M,max_sectors=0"), "max_sectors"));
  EXPECT_TRUE(Contains(CreateError("ram:1M,bs=4096,max_sectors=4"), "max_sectors"));
}

// The in-memory drivers need nothing but a size (a file needs a path).
TEST(DeviceSpecCreate, MemoryDriversCreateFromTheirDefaults) {
  for (const char* type : {"null", "ram"}) {
    DiskRegistry registry;
    auto disk = registry.create(std::string(type) + ":1M");
    EXPECT_EQ(disk->size_bytes(), kMiB) << type;
    EXPECT_EQ(disk->name(), std::string(type) + "0");
  }
}

}  // namespace
}  // namespace blkstack
