// Package benchtest holds what the throughput and memory benchmarks of
// issue 8 share (docs/snapshots.md): the CPU seconds spent on this machine by
// a stage of a pipeline, each stage measured alone, the pipeline's limit
// derived from them, the process's peak resident set, and sizes read from
// the environment. It is for benchmarks only and reads Linux's /proc.
package benchtest

import (
	"bufio"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/streamspace-dev/functions/shared/archive"
)

// Gzip is the snapshot's gzip stage alone: r gzipped at level as a
// snapshot is (archive.Writer, in members), read and written a MiB at a
// time, as the capture hands its stream on.
func Gzip(b *testing.B, w io.Writer, r io.Reader, level int) {
	b.Helper()
	ow := bufio.NewWriterSize(w, 1<<20)
	zw, err := archive.NewWriter(ow, level)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := io.Copy(zw, bufio.NewReaderSize(r, 1<<20)); err != nil {
		b.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		b.Fatal(err)
	}
	if err := ow.Flush(); err != nil {
		b.Fatal(err)
	}
}

// CPU is CPU time spent on this machine's cores: this process's, its exited
// children's (the pods' commands, which the test kubelet runs and waits
// for: "inside the pod"), and its running children's (the kube-apiserver
// that proxies exec, MinIO, etcd), read from /proc.
type CPU struct{ Self, Pod, Servers time.Duration }

// Total is the CPU time of everything on the machine that the run started.
func (c CPU) Total() time.Duration { return c.Self + c.Pod + c.Servers }

// Since is the CPU time spent from start to c.
func (c CPU) Since(start CPU) CPU {
	return CPU{Self: c.Self - start.Self, Pod: c.Pod - start.Pod, Servers: c.Servers - start.Servers}
}

// CPUNow reads the CPU time spent so far.
func CPUNow() CPU {
	var s, c syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &s)
	_ = syscall.Getrusage(syscall.RUSAGE_CHILDREN, &c)
	tv := func(t syscall.Timeval) time.Duration { return time.Duration(t.Nano()) }
	return CPU{Self: tv(s.Utime) + tv(s.Stime), Pod: tv(c.Utime) + tv(c.Stime), Servers: serversCPU()}
}

// serversCPU sums utime and stime of the running children of this process.
func serversCPU() time.Duration {
	me := strconv.Itoa(os.Getpid())
	dirs, _ := filepath.Glob("/proc/[0-9]*/stat")
	var ticks int64
	for _, d := range dirs {
		raw, err := os.ReadFile(d)
		if err != nil {
			continue
		}
		// Fields after the command, which is in parentheses: state ppid … utime stime.
		rest := string(raw[strings.LastIndexByte(string(raw), ')')+2:])
		f := strings.Fields(rest)
		if len(f) < 13 || f[1] != me {
			continue
		}
		u, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		ticks += u + st
	}
	return time.Duration(ticks) * (time.Second / 100) // USER_HZ
}

// Stage is one measured part of a pipeline: wall time, CPU time, and the
// bytes this process allocated meanwhile (garbage the collector then pays
// for).
type Stage struct {
	Wall  time.Duration
	CPU   CPU
	Alloc uint64
}

// Measure runs f and returns its wall and CPU time and its allocations.
func Measure(f func()) Stage {
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	c0, t0 := CPUNow(), time.Now()
	f()
	s := Stage{Wall: time.Since(t0), CPU: CPUNow().Since(c0)}
	runtime.ReadMemStats(&m1)
	s.Alloc = m1.TotalAlloc - m0.TotalAlloc
	return s
}

// Best is the best of a stage measured several times: round is the
// measurement's index (0 for the first), best the best of the earlier ones.
// Each figure is the smallest of the rounds on its own (wall time, each
// side's CPU time, allocations): work from others on a shared machine only
// ever adds to them, so the smallest is the closest to the stage's own
// cost. The same is taken for the stages and for the pipeline they form.
func Best(round int, best, s Stage) Stage {
	if round == 0 {
		return s
	}
	return Stage{
		Wall: min(best.Wall, s.Wall),
		CPU: CPU{Self: min(best.CPU.Self, s.CPU.Self), Pod: min(best.CPU.Pod, s.CPU.Pod),
			Servers: min(best.CPU.Servers, s.CPU.Servers)},
		Alloc: min(best.Alloc, s.Alloc),
	}
}

// Cores is the number of cores the stages of a pipeline share on the
// machine the targets were set for.
const Cores = 2

// Limit is the best wall time of a pipeline of the stages, each measured
// alone, running at once on Cores cores: max(max_i w_i, Σ c_i / Cores).
func Limit(stages ...Stage) time.Duration {
	var maxWall, sumCPU time.Duration
	for _, s := range stages {
		maxWall = max(maxWall, s.Wall)
		sumCPU += s.CPU.Total()
	}
	return max(maxWall, sumCPU/Cores)
}

// Report reports each named stage's wall (w_name-s) and CPU seconds
// (c_name-s) with their split (ReportCPU), the pipeline's limit
// (prefix+"limit-s"), its wall time (prefix+"wall-s"), CPU seconds
// (prefix+"cpu-s", split as prefix+"pass") and the ratio of wall time to
// limit (prefix+"ratio"; the target is at most 1.15).
func Report(b *testing.B, prefix string, whole Stage, names []string, stages ...Stage) {
	b.Helper()
	for i, s := range stages {
		b.ReportMetric(s.Wall.Seconds(), "w_"+prefix+names[i]+"-s")
		b.ReportMetric(s.CPU.Total().Seconds(), "c_"+prefix+names[i]+"-s")
		ReportCPU(b, prefix+names[i], s)
	}
	b.ReportMetric(whole.CPU.Total().Seconds(), prefix+"cpu-s")
	ReportCPU(b, prefix+"pass", whole)
	limit := Limit(stages...)
	b.ReportMetric(limit.Seconds(), prefix+"limit-s")
	b.ReportMetric(whole.Wall.Seconds(), prefix+"wall-s")
	b.ReportMetric(whole.Wall.Seconds()/limit.Seconds(), prefix+"ratio")
}

// ReportCPU reports where a stage's CPU seconds went: this process
// (name+"-self-s"), the pods' commands (name+"-pod-s") and the servers
// (name+"-servers-s"), so a pipeline that costs more than its stages alone
// shows on which side the extra is spent; and what this process allocated
// during it (name+"-alloc-MB").
func ReportCPU(b *testing.B, name string, s Stage) {
	b.Helper()
	b.ReportMetric(s.CPU.Self.Seconds(), name+"-self-s")
	b.ReportMetric(s.CPU.Pod.Seconds(), name+"-pod-s")
	b.ReportMetric(s.CPU.Servers.Seconds(), name+"-servers-s")
	b.ReportMetric(float64(s.Alloc)/1e6, name+"-alloc-MB")
}

// Profiled returns f, which, when dir is not empty, also writes this
// process's CPU profile while it runs to dir/name.pprof. Run the benchmark
// without -cpuprofile then, as only one CPU profile can run at a time.
func Profiled(b *testing.B, dir, name string, f func()) func() {
	b.Helper()
	if dir == "" {
		return f
	}
	return func() {
		out, err := os.Create(filepath.Join(dir, name+".pprof"))
		if err != nil {
			b.Fatal(err)
		}
		defer out.Close()
		if err := pprof.StartCPUProfile(out); err != nil {
			b.Fatal(err)
		}
		defer pprof.StopCPUProfile()
		f()
	}
}

// PeakRSS resets the process's peak resident set (VmHWM) and returns a
// function that reads it, in bytes. It first returns freed memory to the
// system, so that the peak is the measured work's own and not garbage that
// the work before it left to the collector. It skips the benchmark where
// the peak cannot be reset.
func PeakRSS(b *testing.B) func() int64 {
	b.Helper()
	debug.FreeOSMemory()
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
		b.Skipf("cannot reset the peak RSS: %v", err)
	}
	return func() int64 {
		raw, err := os.ReadFile("/proc/self/status")
		if err != nil {
			b.Fatal(err)
		}
		for _, l := range strings.Split(string(raw), "\n") {
			if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
				kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
				if err != nil {
					b.Fatal(err)
				}
				return kb << 10
			}
		}
		b.Fatal("no VmHWM in /proc/self/status")
		return 0
	}
}

// Sizes reads the environment variable name, or def when it is unset: a
// comma-separated list of sizes in bytes, MiB or GiB ("256MiB,2GiB").
func Sizes(b *testing.B, name, def string) []int64 {
	b.Helper()
	v := os.Getenv(name)
	if v == "" {
		v = def
	}
	var out []int64
	for _, s := range strings.Split(v, ",") {
		s = strings.TrimSpace(s)
		mult := int64(1)
		for suffix, m := range map[string]int64{"GiB": 1 << 30, "MiB": 1 << 20} {
			if n, ok := strings.CutSuffix(s, suffix); ok {
				s, mult = n, m
			}
		}
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n <= 0 {
			b.Fatalf("%s=%q: %q is not a size", name, v, s)
		}
		out = append(out, n*mult)
	}
	return out
}

// Rounds reads the environment variable name: how many times a benchmark
// measures its stages and pipelines, 1 when unset. Each figure is then the
// best of the rounds (Best).
func Rounds(b *testing.B, name string) int {
	b.Helper()
	v := os.Getenv(name)
	if v == "" {
		return 1
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		b.Fatalf("%s=%q: not a number of rounds", name, v)
	}
	return n
}
