package testbed

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// RunnerOptions configures StartRunner. Zero values take APISIX's defaults.
type RunnerOptions struct {
	// Path is the runner binary (looked up in PATH if it has no slash).
	// Required.
	Path string
	// Args are the arguments after the binary, e.g. {"run", "-c", "conf.yaml"}
	// (APISIX's ext-plugin.cmd without its first element).
	Args []string
	// WorkDir is the process's working directory. Default: inherited.
	WorkDir string

	// Dir is the directory of the socket file. Default: a new temporary
	// directory, removed by Stop.
	Dir string
	// SocketID is the <n> of apisix-<n>.sock (APISIX uses its master pid).
	// Default: the current process id.
	SocketID int
	// ConfExpireTime is APISIX_CONF_EXPIRE_TIME in seconds. Default 3600.
	// The reference framework keeps confs for 1.2 × this.
	ConfExpireTime int
	// ExtraEnv adds "KEY=value" entries to the environment. This is a
	// deviation from APISIX, which passes only APISIX_LISTEN_ADDRESS,
	// APISIX_CONF_EXPIRE_TIME and PATH (more only through nginx_config.envs);
	// use it for test knobs only.
	ExtraEnv []string

	// Output receives the merged stdout and stderr of every process
	// (writes are serialized). Default: an in-memory buffer keeping the last
	// OutputLimit bytes, read with Runner.Output.
	Output io.Writer
	// OutputLimit bounds the default output buffer. Default 1 MiB.
	OutputLimit int

	// RespawnDelay is the wait between an unexpected exit and the respawn.
	// Default 3 s (APISIX sleeps 3 s, with no backoff).
	RespawnDelay time.Duration
	// NoRespawn disables respawning (not an APISIX behaviour).
	NoRespawn bool
	// StopGrace is how long Stop waits after SIGTERM before SIGKILL.
	// Default 1 s (APISIX waits 1 s in exit_worker, then kills).
	StopGrace time.Duration
	// ReloadGrace is how long Reload waits after SIGTERM to the old process
	// before SIGKILL. Default 1 s.
	ReloadGrace time.Duration
}

// ExitInfo describes the end of one runner process.
type ExitInfo struct {
	PID   int
	Err   error            // what exec.Cmd.Wait returned
	State *os.ProcessState // nil if the process could not be waited for
	// Expected is true when the exit was caused by Stop or Reload; such
	// exits are not followed by a respawn and don't call OnExit hooks.
	Expected bool
	Time     time.Time
}

// Runner manages the plugin runner process like APISIX's privileged agent.
type Runner struct {
	opts   RunnerOptions
	sock   string
	tmpDir string
	out    io.Writer
	buf    *tailBuffer

	opMu sync.Mutex // serializes spawns, Reload and Stop

	mu       sync.Mutex
	cur      *proc
	gen      uint64
	stopped  bool
	stopCh   chan struct{}
	starts   int
	restarts int
	lastErr  error
	exits    []ExitInfo
	hooks    []func(ExitInfo)

	wg sync.WaitGroup
}

type proc struct {
	cmd  *exec.Cmd
	pid  int
	done chan struct{}
}

// StartRunner spawns the runner and returns once the process has started
// (use WaitReady to wait for its socket).
func StartRunner(opts RunnerOptions) (*Runner, error) {
	if opts.Path == "" {
		return nil, errors.New("start runner: empty path")
	}
	if opts.ConfExpireTime <= 0 {
		opts.ConfExpireTime = 3600
	}
	if opts.RespawnDelay <= 0 {
		opts.RespawnDelay = 3 * time.Second
	}
	if opts.StopGrace <= 0 {
		opts.StopGrace = time.Second
	}
	if opts.ReloadGrace <= 0 {
		opts.ReloadGrace = time.Second
	}
	if opts.OutputLimit <= 0 {
		opts.OutputLimit = 1 << 20
	}
	if opts.SocketID == 0 {
		opts.SocketID = os.Getpid()
	}
	r := &Runner{opts: opts, stopCh: make(chan struct{})}
	dir := opts.Dir
	if dir == "" {
		d, err := os.MkdirTemp("", "tb")
		if err != nil {
			return nil, fmt.Errorf("start runner: %w", err)
		}
		dir, r.tmpDir = d, d
	}
	abs, err := filepath.Abs(filepath.Join(dir, "apisix-"+strconv.Itoa(opts.SocketID)+".sock"))
	if err != nil {
		r.cleanup()
		return nil, fmt.Errorf("start runner: %w", err)
	}
	if len(abs) > 104 {
		r.cleanup()
		return nil, fmt.Errorf("start runner: socket path %q is too long for a unix socket", abs)
	}
	r.sock = abs
	if opts.Output != nil {
		r.out = &lockedWriter{w: opts.Output}
	} else {
		r.buf = &tailBuffer{limit: opts.OutputLimit}
		r.out = r.buf
	}
	r.opMu.Lock()
	defer r.opMu.Unlock()
	if _, err := r.spawn(); err != nil {
		r.cleanup()
		return nil, fmt.Errorf("start runner: %w", err)
	}
	return r, nil
}

func (r *Runner) cleanup() {
	if r.tmpDir != "" {
		_ = os.RemoveAll(r.tmpDir)
	}
}

// env is exactly what APISIX's spawn_proc gives the runner (plus ExtraEnv).
func (r *Runner) env() []string {
	env := []string{
		"APISIX_LISTEN_ADDRESS=unix:" + r.sock,
		"APISIX_CONF_EXPIRE_TIME=" + strconv.Itoa(r.opts.ConfExpireTime),
		"PATH=" + os.Getenv("PATH"),
	}
	return append(env, r.opts.ExtraEnv...)
}

// spawn starts a process and makes it current. opMu must be held.
func (r *Runner) spawn() (*proc, error) {
	cmd := exec.Command(r.opts.Path, r.opts.Args...)
	cmd.Env = r.env()
	cmd.Dir = r.opts.WorkDir
	cmd.Stdout = r.out
	cmd.Stderr = r.out
	cmd.SysProcAttr = sysProcAttr()
	cmd.WaitDelay = time.Second
	if err := cmd.Start(); err != nil {
		r.mu.Lock()
		r.lastErr = err
		r.mu.Unlock()
		return nil, fmt.Errorf("spawn %s: %w", r.opts.Path, err)
	}
	p := &proc{cmd: cmd, pid: cmd.Process.Pid, done: make(chan struct{})}
	r.mu.Lock()
	r.cur = p
	r.gen++
	r.starts++
	r.mu.Unlock()
	r.wg.Add(1)
	go r.wait(p)
	return p, nil
}

// wait reaps a process and, if its exit was unexpected, respawns it after
// RespawnDelay (APISIX's setup_runner loop).
func (r *Runner) wait(p *proc) {
	defer r.wg.Done()
	err := p.cmd.Wait()
	info := ExitInfo{PID: p.pid, Err: err, State: p.cmd.ProcessState, Time: time.Now()}
	r.mu.Lock()
	current := r.cur == p
	if current {
		r.cur = nil
	}
	info.Expected = !current || r.stopped
	r.exits = append(r.exits, info)
	if len(r.exits) > 64 {
		r.exits = r.exits[len(r.exits)-64:]
	}
	hooks := slices.Clone(r.hooks)
	gen := r.gen
	r.mu.Unlock()
	if !info.Expected {
		// before done is closed, so Kill returns after the hooks ran
		for _, h := range hooks {
			h(info)
		}
	}
	close(p.done)
	if info.Expected {
		return
	}
	if r.opts.NoRespawn {
		return
	}
	t := time.NewTimer(r.opts.RespawnDelay)
	defer t.Stop()
	select {
	case <-r.stopCh:
		return
	case <-t.C:
	}
	r.opMu.Lock()
	defer r.opMu.Unlock()
	r.mu.Lock()
	skip := r.stopped || r.gen != gen || r.cur != nil
	r.mu.Unlock()
	if skip {
		return
	}
	if _, err := r.spawn(); err != nil {
		// APISIX's timer dies with the error: no further respawn.
		return
	}
	r.mu.Lock()
	r.restarts++
	r.mu.Unlock()
}

// SocketPath returns the socket file path (without "unix:").
func (r *Runner) SocketPath() string { return r.sock }

// ListenAddress returns APISIX_LISTEN_ADDRESS as given to the runner.
func (r *Runner) ListenAddress() string { return "unix:" + r.sock }

// Env returns the environment given to the runner.
func (r *Runner) Env() []string { return r.env() }

// OnExit registers fn to be called after every unexpected exit, before the
// respawn delay (and before Kill returns). Use it to flush a Gateway's tokens, as APISIX does on its
// runner_exit event: r.OnExit(func(ExitInfo) { g.FlushTokens() }).
func (r *Runner) OnExit(fn func(ExitInfo)) {
	r.mu.Lock()
	r.hooks = append(r.hooks, fn)
	r.mu.Unlock()
}

// PID returns the current process id, or 0 while no process runs.
func (r *Runner) PID() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cur == nil {
		return 0
	}
	return r.cur.pid
}

// Restarts counts respawns after unexpected exits (not Reload).
func (r *Runner) Restarts() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.restarts
}

// Starts counts processes started (first start, respawns and reloads).
func (r *Runner) Starts() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.starts
}

// Exits returns the last (up to 64) process exits, oldest first.
func (r *Runner) Exits() []ExitInfo {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]ExitInfo(nil), r.exits...)
}

// LastSpawnError returns the error of the last failed spawn, if any. A
// failed respawn ends respawning, as in APISIX.
func (r *Runner) LastSpawnError() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lastErr
}

// Output returns the captured output when RunnerOptions.Output was nil.
func (r *Runner) Output() string {
	if r.buf == nil {
		return ""
	}
	return r.buf.String()
}

func (r *Runner) current() *proc {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cur
}

// errNoProcess is returned when no runner process is running.
var errNoProcess = errors.New("no runner process")

// Signal sends sig to the current process.
func (r *Runner) Signal(sig os.Signal) error {
	p := r.current()
	if p == nil {
		return fmt.Errorf("signal: %w", errNoProcess)
	}
	if err := p.cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("signal: %w", err)
	}
	return nil
}

// Kill sends SIGKILL to the current process and waits until it has been
// reaped. Unless the Runner is stopped, it is respawned RespawnDelay later.
func (r *Runner) Kill() error {
	p := r.current()
	if p == nil {
		return fmt.Errorf("kill: %w", errNoProcess)
	}
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("kill: %w", err)
	}
	<-p.done
	return nil
}

// WaitReady waits until the socket accepts a connection.
func (r *Runner) WaitReady(ctx context.Context) error {
	var last error
	for {
		r.mu.Lock()
		stopped := r.stopped
		r.mu.Unlock()
		if stopped {
			return errors.New("wait ready: runner stopped")
		}
		d := net.Dialer{Timeout: 200 * time.Millisecond}
		c, err := d.DialContext(ctx, "unix", r.sock)
		if err == nil {
			_ = c.Close()
			return nil
		}
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait ready: %w (last dial: %v)", ctx.Err(), last)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// WaitRespawn waits until the runner has been respawned n times in all
// (Restarts() >= n: after Kill, or a crash, and RespawnDelay), then until
// the new process's socket accepts a connection (WaitReady). ctx bounds
// both waits.
func (r *Runner) WaitRespawn(ctx context.Context, n int) error {
	for r.Restarts() < n {
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait respawn: %w (%d of %d respawns; last spawn error: %v)", ctx.Err(), r.Restarts(), n, r.LastSpawnError())
		case <-time.After(10 * time.Millisecond):
		}
	}
	return r.WaitReady(ctx)
}

// terminate sends SIGTERM, then SIGKILL after grace (or when ctx ends), and
// waits for the process to be reaped.
func terminate(ctx context.Context, p *proc, grace time.Duration) {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-p.done:
		return
	case <-t.C:
	case <-ctx.Done():
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// Reload reproduces "apisix reload" (APISIX issue 11347): it starts a new
// runner on the same socket path while the old one still runs, waits (up to
// 5 s or ctx) until the new process has created its own socket file, then
// sends the old one SIGTERM and SIGKILL ReloadGrace later if it is still
// alive. The Runner then manages the new process. A runner that removes the
// socket file on exit without checking it is still its own leaves no socket.
func (r *Runner) Reload(ctx context.Context) error {
	r.opMu.Lock()
	defer r.opMu.Unlock()
	r.mu.Lock()
	if r.stopped {
		r.mu.Unlock()
		return errors.New("reload: runner stopped")
	}
	old := r.cur
	r.mu.Unlock()
	before, _ := os.Stat(r.sock)
	np, err := r.spawn()
	if err != nil {
		return fmt.Errorf("reload: %w", err)
	}
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	for {
		fi, err := os.Stat(r.sock)
		// inode numbers are reused at once on tmpfs: compare mtimes too
		if err == nil && (before == nil || !os.SameFile(before, fi) || !before.ModTime().Equal(fi.ModTime())) {
			break
		}
		select {
		case <-wctx.Done():
		case <-np.done:
		case <-time.After(5 * time.Millisecond):
			continue
		}
		break
	}
	if old != nil {
		terminate(ctx, old, r.opts.ReloadGrace)
	}
	return nil
}

// Stop stops the runner for good: no more respawns, SIGTERM to the current
// process and SIGKILL after StopGrace (or when ctx ends). It removes the
// temporary socket directory if StartRunner created it.
func (r *Runner) Stop(ctx context.Context) error {
	r.opMu.Lock()
	r.mu.Lock()
	if r.stopped {
		r.mu.Unlock()
		r.opMu.Unlock()
		return nil
	}
	r.stopped = true
	close(r.stopCh)
	p := r.cur
	r.mu.Unlock()
	if p != nil {
		terminate(ctx, p, r.opts.StopGrace)
	}
	r.opMu.Unlock()
	r.wg.Wait()
	r.cleanup()
	return nil
}

// lockedWriter serializes writes from several processes' output copiers.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// tailBuffer keeps the last limit bytes written to it.
type tailBuffer struct {
	mu    sync.Mutex
	limit int
	buf   []byte
	drop  int64
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if over := len(t.buf) - t.limit; over > 0 {
		t.drop += int64(over)
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}
