package testbin

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Process is a server started for the tests. It dies with the test binary
// (the kernel kills it when its parent exits), so a server shared by every
// test of a package needs no TestMain to stop it.
type Process struct {
	name string
	cmd  *exec.Cmd
	out  *logBuffer
	done chan struct{}
	err  error // the exit status, set before done closes
}

// Start runs the server at path with args and extra environment variables.
func Start(path string, args []string, env ...string) (*Process, error) {
	cmd := exec.Command(path, args...)
	cmd.Env = append(os.Environ(), env...)
	out := &logBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("testbin: start %s: %w", filepath.Base(path), err)
	}
	p := &Process{name: filepath.Base(path), cmd: cmd, out: out, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// WaitReady calls ready until it returns nil, the process exits, or ctx
// ends. The error carries the end of the server's output.
func (p *Process) WaitReady(ctx context.Context, ready func(context.Context) error) error {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		err := ready(ctx)
		if err == nil {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("testbin: %s exited before it was ready (%v):\n%s", p.name, p.err, p.Output())
		case <-ctx.Done():
			return fmt.Errorf("testbin: %s not ready: %v\n%s", p.name, err, p.Output())
		case <-tick.C:
		}
	}
}

// Stop kills the server and waits for it to exit.
func (p *Process) Stop() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

// Exited reports whether the server has exited.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Output returns the last 8 KiB the server wrote to stdout and stderr.
func (p *Process) Output() string { return p.out.tail(8 << 10) }

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// TempDir makes a folder for a server shared by a whole test binary, named
// with prefix and this process's id. A test binary cannot remove it when it
// exits, so TempDir first removes the folders of earlier binaries that have
// exited.
func TempDir(prefix string) (string, error) {
	old, _ := filepath.Glob(filepath.Join(os.TempDir(), prefix+"-*"))
	for _, dir := range old {
		pid, err := strconv.Atoi(strings.TrimPrefix(filepath.Base(dir), prefix+"-"))
		if err != nil || syscall.Kill(pid, 0) == nil || pid == os.Getpid() {
			continue
		}
		_ = os.RemoveAll(dir)
	}
	dir := filepath.Join(os.TempDir(), fmt.Sprintf("%s-%d", prefix, os.Getpid()))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	return dir, nil
}

// logBuffer keeps a server's output for error messages.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.buf.Len() > 1<<20 {
		rest := b.buf.Bytes()[b.buf.Len()-(64<<10):]
		b.buf = *bytes.NewBuffer(append([]byte(nil), rest...))
	}
	return b.buf.Write(p)
}

func (b *logBuffer) tail(n int) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.buf.Bytes()
	if len(s) > n {
		s = s[len(s)-n:]
	}
	return string(s)
}
