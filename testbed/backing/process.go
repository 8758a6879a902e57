package backing

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"
)

// killWait bounds how long Kill waits for a SIGKILLed process to be reaped.
const killWait = 10 * time.Second

// process is one server child process. It runs in its own process group
// (signals go to the whole group, so forked children such as Redis BGSAVE
// workers are included) and gets SIGKILL when the parent dies.
type process struct {
	name    string   // short name used in errors, e.g. "redis-server"
	bin     string   // absolute path of the binary
	args    []string // arguments without the binary
	dir     string   // working directory and home of the log files
	logs    []string // log files (in dir) whose tail is shown on failure
	outFile string   // file receiving stdout and stderr

	mu     sync.Mutex
	cmd    *exec.Cmd
	done   chan struct{} // closed when the current process has been reaped
	frozen bool
}

// newProcess describes a process; it does not start it.
func newProcess(name, bin, dir string, args []string, logs ...string) *process {
	out := filepath.Join(dir, name+".out.log")
	return &process{
		name:    name,
		bin:     bin,
		args:    args,
		dir:     dir,
		outFile: out,
		logs:    append([]string{out}, logs...),
	}
}

// start launches the process. It fails if the process is already running.
func (p *process) start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done != nil {
		select {
		case <-p.done:
		default:
			return fmt.Errorf("start %s: already running (pid %d)", p.name, p.cmd.Process.Pid)
		}
	}
	out, err := os.OpenFile(p.outFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("start %s: %w", p.name, err)
	}
	cmd := exec.Command(p.bin, p.args...)
	cmd.Dir = p.dir
	cmd.Stdout = out
	cmd.Stderr = out
	cmd.Stdin = nil
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	done := make(chan struct{})
	started := make(chan error, 1)
	// Pdeathsig fires when the OS thread that forked the child exits, not
	// when the parent process exits. Pin the goroutine to its thread for the
	// child's whole life (it is blocked in wait4 anyway) so the signal is
	// only ever delivered when the parent process really dies.
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		err := cmd.Start()
		started <- err
		if err != nil {
			out.Close()
			close(done)
			return
		}
		_ = cmd.Wait()
		out.Close()
		close(done)
	}()
	if err := <-started; err != nil {
		return fmt.Errorf("start %s: %w", p.name, err)
	}
	p.cmd = cmd
	p.done = done
	p.frozen = false
	return nil
}

// exited returns a channel closed when the current process has exited, or
// nil if it was never started.
func (p *process) exited() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.done
}

// running reports whether the process has been started and not yet exited.
func (p *process) running() bool {
	ch := p.exited()
	if ch == nil {
		return false
	}
	select {
	case <-ch:
		return false
	default:
		return true
	}
}

// pid returns the process id, or 0 when the process is not running.
func (p *process) pid() int {
	if !p.running() {
		return 0
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd.Process.Pid
}

// exitStatus describes how the last process ended.
func (p *process) exitStatus() string {
	if p.running() || p.exited() == nil {
		return "not exited"
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil || p.cmd.ProcessState == nil {
		return "not started"
	}
	return p.cmd.ProcessState.String()
}

// signal sends sig to the process group. It fails when the process is not
// running.
func (p *process) signal(op string, sig syscall.Signal) error {
	if !p.running() {
		return fmt.Errorf("%s %s: process is not running", op, p.name)
	}
	p.mu.Lock()
	pid := p.cmd.Process.Pid
	p.mu.Unlock()
	if err := syscall.Kill(-pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("%s %s: %w", op, p.name, err)
	}
	return nil
}

// freeze stops the process group with SIGSTOP.
func (p *process) freeze() error {
	if err := p.signal("freeze", syscall.SIGSTOP); err != nil {
		return err
	}
	p.mu.Lock()
	p.frozen = true
	p.mu.Unlock()
	return nil
}

// thaw resumes the process group with SIGCONT.
func (p *process) thaw() error {
	if err := p.signal("thaw", syscall.SIGCONT); err != nil {
		return err
	}
	p.mu.Lock()
	p.frozen = false
	p.mu.Unlock()
	return nil
}

// isFrozen reports whether freeze was called without a later thaw.
func (p *process) isFrozen() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.frozen && p.done != nil
}

// kill resumes (if frozen) and SIGKILLs the process group, then waits until
// the process has been reaped. Killing a process that is not running is a
// no-op.
func (p *process) kill() error {
	ch := p.exited()
	if ch == nil {
		return nil
	}
	p.mu.Lock()
	pid := p.cmd.Process.Pid
	p.mu.Unlock()
	select {
	case <-ch:
	default:
		// SIGCONT first so that a frozen process is not left stopped
		// should SIGKILL somehow be delayed; errors mean it is gone.
		_ = syscall.Kill(-pid, syscall.SIGCONT)
		if err := syscall.Kill(-pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			return fmt.Errorf("kill %s: %w", p.name, err)
		}
	}
	select {
	case <-ch:
	case <-time.After(killWait):
		return fmt.Errorf("kill %s: process %d did not exit within %v", p.name, pid, killWait)
	}
	// Kill any remaining member of the group (e.g. a forked child).
	_ = syscall.Kill(-pid, syscall.SIGKILL)
	p.mu.Lock()
	p.frozen = false
	p.mu.Unlock()
	return nil
}

// logTail returns the last lines of the process's log files, formatted for
// inclusion in an error message.
func (p *process) logTail() string {
	var b strings.Builder
	for _, f := range p.logs {
		t := tailFile(f, 2048)
		if strings.TrimSpace(t) == "" {
			continue
		}
		fmt.Fprintf(&b, "\n--- tail of %s ---\n%s", f, strings.TrimRight(t, "\n"))
	}
	if b.Len() == 0 {
		return " (no log output)"
	}
	return b.String()
}

// tailFile returns at most n bytes from the end of the file, starting at a
// line boundary when possible.
func tailFile(path string, n int64) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return ""
	}
	off := st.Size() - n
	if off < 0 {
		off = 0
	}
	buf, err := io.ReadAll(io.NewSectionReader(f, off, st.Size()-off))
	if err != nil {
		return ""
	}
	s := string(buf)
	if off > 0 {
		if i := strings.IndexByte(s, '\n'); i >= 0 {
			s = s[i+1:]
		}
	}
	return s
}

// makeDir creates the temporary directory of a server.
func makeDir(op, pattern string) (string, error) {
	dir, err := os.MkdirTemp("", pattern)
	if err != nil {
		return "", fmt.Errorf("%s: %w", op, err)
	}
	return dir, nil
}

// removeDir removes a server directory unless BACKING_KEEP_DIRS is set.
func removeDir(dir string) error {
	if dir == "" || os.Getenv("BACKING_KEEP_DIRS") != "" {
		return nil
	}
	return os.RemoveAll(dir)
}

// startAttempts is how many ports a start tries when the caller did not fix
// the port and the server fails to come up (typically a lost port race).
const startAttempts = 3

// withPortRetry calls try with a free port (or the fixed port) and retries
// with a new free port when the port was chosen here and try fails.
func withPortRetry(op string, fixed int, try func(port int) error) error {
	attempts := startAttempts
	if fixed != 0 {
		attempts = 1
	}
	var errs []error
	for i := 0; i < attempts; i++ {
		port := fixed
		if port == 0 {
			var err error
			if port, err = FreePort(); err != nil {
				return fmt.Errorf("%s: %w", op, err)
			}
		}
		err := try(port)
		if err == nil {
			return nil
		}
		var pe permanentError
		if errors.As(err, &pe) {
			return pe.err
		}
		errs = append(errs, err)
	}
	if len(errs) == 1 {
		return errs[0]
	}
	return fmt.Errorf("%s: %d attempts failed: %w", op, len(errs), errors.Join(errs...))
}

// permanentError marks a start error that a new port would not fix.
type permanentError struct{ err error }

func (e permanentError) Error() string { return e.err.Error() }
func (e permanentError) Unwrap() error { return e.err }
