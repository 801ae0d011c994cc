package nsholder

// Spawning inside the holder's namespaces, and monitoring what was spawned
// (the conmon pattern).
//
// The creator and the holder share a SOCK_SEQPACKET socket pair (the
// holder's end is its fd 3). One datagram = one JSON message, so no framing
// is needed, and file descriptors travel with it as SCM_RIGHTS. The creator
// opens every file the child needs (output files, status file, pipes): the
// holder runs as a uid the host's files do not map to and could not open
// them itself.
//
// The holder starts the child with exec.Cmd (a child of a process in a user
// namespace is a member of that user namespace and of the holder's network
// namespace; Cloneflags may add more namespaces, which the holder may create
// because it is root of its user namespace), then, for as long as the child
// lives, drains its stdout and stderr into the given files, each capped
// (bytes over the cap are read and counted, never block the writer), waits
// for it, and writes an ExitStatus as JSON to the status file and to the
// socket. If the creator dies (the daemon crashed), the holder keeps
// monitoring until its last child ended, then exits; a restarted daemon finds
// the outcome in the status file (ReadStatus).

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// SpawnRequest describes a process for the holder to start and monitor.
// The holder does not take ownership of the *os.File values: the caller may
// close them once Spawn returned (the holder received duplicates).
type SpawnRequest struct {
	Path string   // executable, resolved in the holder's mount namespace ("/proc/self/exe" re-executes the binary)
	Args []string // argv including argv[0]
	Env  []string
	Dir  string
	// Cloneflags adds namespaces (CLONE_NEWNS, CLONE_NEWPID, ...) created
	// by the holder, owned by its user namespace.
	Cloneflags uintptr
	// ExtraFiles become fd 3, 4, ... of the child. When ResultPipe is set,
	// one more fd (3+len(ExtraFiles)) is the write end of a pipe whose
	// content (up to 64 KiB) the holder returns in ExitStatus.Result.
	ExtraFiles []*os.File
	ResultPipe bool
	// Stdin of the child; nil = /dev/null.
	Stdin *os.File
	// Stdout/Stderr receive the child's output through a pipe drained by
	// the holder; nil = /dev/null. OutputCap bounds what is written to each
	// (0 = unlimited); the rest is read and counted as Dropped.
	Stdout, Stderr *os.File
	OutputCap      int64
	// Status, when set, receives the ExitStatus as JSON when the child ended.
	Status *os.File
}

// Stream counts one output stream.
type Stream struct {
	Bytes   int64 `json:"bytes"`   // written to the file
	Dropped int64 `json:"dropped"` // read but over the cap
}

// ExitStatus is what the holder observed about a spawned process.
type ExitStatus struct {
	PID      int             `json:"pid"`
	Exited   bool            `json:"exited"`           // exited normally, Code valid
	Code     int             `json:"code"`             // exit code, -1 when signaled
	Signal   int             `json:"signal,omitempty"` // terminating signal
	UserCPU  time.Duration   `json:"user_cpu_ns"`      // rusage of the child and its reaped descendants
	SysCPU   time.Duration   `json:"sys_cpu_ns"`
	MaxRSSKB int64           `json:"max_rss_kb"`
	Stdout   Stream          `json:"stdout"`
	Stderr   Stream          `json:"stderr"`
	Result   json.RawMessage `json:"result,omitempty"` // what the child wrote to its result pipe, if JSON
	Started  time.Time       `json:"started"`
	Ended    time.Time       `json:"ended"`
	Err      string          `json:"error,omitempty"` // a monitoring problem (status file, copier)
}

// ReadStatus reads an ExitStatus that a holder wrote to a status file.
// It returns an error wrapping os.ErrNotExist, or "empty", while the process
// has not ended.
func ReadStatus(path string) (ExitStatus, error) {
	var st ExitStatus
	b, err := os.ReadFile(path)
	if err != nil {
		return st, fmt.Errorf("read exit status %s: %w", path, err)
	}
	if len(b) == 0 {
		return st, fmt.Errorf("read exit status %s: empty (still running?): %w", path, os.ErrNotExist)
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("read exit status %s: %w", path, err)
	}
	return st, nil
}

// Process is a process spawned by a holder.
type Process struct {
	PID  int
	done chan struct{}
	st   ExitStatus
	err  error
}

// Done is closed when the process ended (or the holder was lost).
func (p *Process) Done() <-chan struct{} { return p.done }

// Wait returns the exit status once the process ended. It returns an error
// when the holder went away before reporting (the status file, if any, may
// still be written by a holder that survived).
func (p *Process) Wait() (ExitStatus, error) {
	<-p.done
	return p.st, p.err
}

// wire messages
type spawnMsg struct {
	ID         uint64   `json:"id"`
	Path       string   `json:"path"`
	Args       []string `json:"args"`
	Env        []string `json:"env"`
	Dir        string   `json:"dir,omitempty"`
	Cloneflags uintptr  `json:"cloneflags"`
	Roles      []string `json:"roles"` // one per passed fd: stdin, stdout, stderr, status, extra
	ResultPipe bool     `json:"result_pipe"`
	OutputCap  int64    `json:"output_cap"`
}

type replyMsg struct {
	ID   uint64      `json:"id"`
	PID  int         `json:"pid,omitempty"`
	Err  string      `json:"error,omitempty"`
	Exit *ExitStatus `json:"exit,omitempty"`
}

// maxMsg bounds one message (a spawn request, or an exit status with up
// to 64 KiB of result).
const maxMsg = 1 << 20

// ErrNoHolder is returned by Spawn when the holder process is gone or
// released.
var ErrNoHolder = errors.New("nsholder: holder not running")

// Spawn asks the holder to start and monitor a process. It returns once the
// process started (or failed to).
func (h *Holder) Spawn(req SpawnRequest) (*Process, error) {
	for _, f := range req.ExtraFiles {
		if f == nil {
			return nil, fmt.Errorf("spawn %s: nil extra file", req.Path)
		}
	}
	h.mu.Lock()
	if h.ctl == nil {
		h.mu.Unlock()
		return nil, fmt.Errorf("spawn %s in holder %s: %w", req.Path, h.cfg.Dir, ErrNoHolder)
	}
	h.nextID++
	id := h.nextID
	p := &Process{done: make(chan struct{})}
	started := make(chan replyMsg, 1)
	h.pending[id] = &pending{proc: p, started: started}
	ctl := h.ctl
	h.mu.Unlock()

	msg := spawnMsg{ID: id, Path: req.Path, Args: req.Args, Env: req.Env, Dir: req.Dir,
		Cloneflags: req.Cloneflags, ResultPipe: req.ResultPipe, OutputCap: req.OutputCap}
	var fds []int
	add := func(role string, f *os.File) {
		if f != nil {
			msg.Roles = append(msg.Roles, role)
			fds = append(fds, int(f.Fd()))
		}
	}
	add("stdin", req.Stdin)
	add("stdout", req.Stdout)
	add("stderr", req.Stderr)
	add("status", req.Status)
	for _, f := range req.ExtraFiles {
		add("extra", f)
	}
	b, err := json.Marshal(msg)
	if err != nil {
		h.forget(id)
		return nil, err
	}
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	err = ctl.send(b, oob)
	// keep the files alive until the kernel duplicated them
	for _, f := range append([]*os.File{req.Stdin, req.Stdout, req.Stderr, req.Status}, req.ExtraFiles...) {
		if f != nil {
			_ = f.Fd()
		}
	}
	if err != nil {
		h.forget(id)
		return nil, fmt.Errorf("spawn %s: send request to holder %s: %w", req.Path, h.cfg.Dir, err)
	}
	r, ok := <-started
	if !ok {
		return nil, fmt.Errorf("spawn %s in holder %s: %w", req.Path, h.cfg.Dir, ErrNoHolder)
	}
	if r.Err != "" {
		return nil, fmt.Errorf("spawn %s in holder %s: %s", req.Path, h.cfg.Dir, r.Err)
	}
	p.PID = r.PID
	return p, nil
}

type pending struct {
	proc    *Process
	started chan replyMsg // one message, or closed when the holder is lost
	sent    bool
}

func (h *Holder) forget(id uint64) {
	h.mu.Lock()
	delete(h.pending, id)
	h.mu.Unlock()
}

// readReplies runs for the life of the control socket: it routes the
// holder's messages to the waiting Spawn and Process values, and fails
// them all when the socket ends.
func (h *Holder) readReplies(ctl *seqConn) {
	defer close(h.readerDone)
	small := make([]byte, 4096)
	for {
		buf, err := ctl.msgBuf(small)
		if err != nil {
			break
		}
		n, _, err := ctl.recv(buf, nil)
		if err != nil || n == 0 {
			break
		}
		var r replyMsg
		if json.Unmarshal(buf[:n], &r) != nil {
			continue
		}
		h.mu.Lock()
		pd := h.pending[r.ID]
		if pd == nil {
			h.mu.Unlock()
			continue
		}
		switch {
		case r.Exit != nil:
			delete(h.pending, r.ID)
			pd.proc.st = *r.Exit
			close(pd.proc.done)
		case !pd.sent:
			pd.sent = true
			pd.started <- r
			if r.Err != "" {
				delete(h.pending, r.ID)
			}
		}
		h.mu.Unlock()
	}
	h.mu.Lock()
	for id, pd := range h.pending {
		if !pd.sent {
			close(pd.started)
		} else {
			pd.proc.err = fmt.Errorf("wait for pid %d: %w (its status file may still be written)", pd.proc.PID, ErrNoHolder)
			close(pd.proc.done)
		}
		delete(h.pending, id)
	}
	h.mu.Unlock()
}

// ---- holder side ----

type holderState struct {
	ctl      *seqConn
	wmu      sync.Mutex
	mu       sync.Mutex
	active   int
	lifeline bool // creator still there
}

func (s *holderState) send(r replyMsg) {
	b, _ := json.Marshal(r)
	s.wmu.Lock()
	s.ctl.send(b, nil)
	s.wmu.Unlock()
}

// maybeExit ends the holder when the creator is gone and nothing is
// monitored any more.
func (s *holderState) maybeExit() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.lifeline && s.active == 0 {
		os.Exit(0)
	}
}

func (s *holderState) creatorGone() {
	s.mu.Lock()
	s.lifeline = false
	s.mu.Unlock()
	s.maybeExit()
}

func serveSpawns(ctlFD int) {
	c, err := newSeqConn(ctlFD, "nsholder-ctl")
	if err != nil {
		io.Copy(io.Discard, os.Stdin)
		os.Exit(0)
	}
	s := &holderState{ctl: c, lifeline: true}
	go func() {
		io.Copy(io.Discard, os.Stdin)
		s.creatorGone()
	}()
	small := make([]byte, 4096)
	oob := make([]byte, unix.CmsgSpace(64*4))
	for {
		buf, err := s.ctl.msgBuf(small)
		if err != nil {
			break
		}
		n, oobn, err := s.ctl.recv(buf, oob)
		if err != nil || n == 0 {
			break
		}
		var files []*os.File
		if msgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
			for _, m := range msgs {
				if fds, err := unix.ParseUnixRights(&m); err == nil {
					for _, fd := range fds {
						unix.CloseOnExec(fd)
						files = append(files, os.NewFile(uintptr(fd), "passed"))
					}
				}
			}
		}
		var m spawnMsg
		if err := json.Unmarshal(buf[:n], &m); err != nil {
			closeAll(files)
			continue
		}
		s.spawn(m, files)
	}
	s.creatorGone()
	select {} // monitors still running; maybeExit ends the process
}

func closeAll(fs []*os.File) {
	for _, f := range fs {
		if f != nil {
			f.Close()
		}
	}
}

func (s *holderState) spawn(m spawnMsg, files []*os.File) {
	fail := func(err error) {
		closeAll(files)
		s.send(replyMsg{ID: m.ID, Err: err.Error()})
	}
	if len(files) != len(m.Roles) {
		fail(fmt.Errorf("received %d fds for %d roles", len(files), len(m.Roles)))
		return
	}
	var stdin, stdout, stderr, status *os.File
	var extra []*os.File
	for i, r := range m.Roles {
		switch r {
		case "stdin":
			stdin = files[i]
		case "stdout":
			stdout = files[i]
		case "stderr":
			stderr = files[i]
		case "status":
			status = files[i]
		default:
			extra = append(extra, files[i])
		}
	}
	cmd := &exec.Cmd{Path: m.Path, Args: m.Args, Env: m.Env, Dir: m.Dir,
		SysProcAttr: &syscall.SysProcAttr{Cloneflags: m.Cloneflags}}
	if cmd.Env == nil {
		cmd.Env = []string{}
	}
	if stdin != nil {
		cmd.Stdin = stdin
	}
	var toClose []*os.File // write ends the holder must drop after start
	var copiers sync.WaitGroup
	var outSt, errSt Stream
	capture := func(dst *os.File, st *Stream) (*os.File, error) {
		pr, pw, err := os.Pipe()
		if err != nil {
			return nil, err
		}
		toClose = append(toClose, pw)
		copiers.Add(1)
		go func() {
			defer copiers.Done()
			copyCapped(dst, pr, m.OutputCap, st)
			pr.Close()
		}()
		return pw, nil
	}
	var err error
	if stdout != nil {
		if w, e := capture(stdout, &outSt); e == nil {
			cmd.Stdout = w
		} else {
			err = e
		}
	}
	if stderr != nil && err == nil {
		if w, e := capture(stderr, &errSt); e == nil {
			cmd.Stderr = w
		} else {
			err = e
		}
	}
	var resR *os.File
	if m.ResultPipe && err == nil {
		r, w, e := os.Pipe()
		if e != nil {
			err = e
		} else {
			resR = r
			extra = append(extra, w)
			toClose = append(toClose, w)
		}
	}
	cmd.ExtraFiles = extra
	if err == nil {
		err = cmd.Start()
	}
	closeAll(toClose)
	closeAll(extra)
	if stdin != nil {
		stdin.Close()
	}
	if err != nil {
		if resR != nil {
			resR.Close()
		}
		// copiers end: their write ends are closed
		copiers.Wait()
		closeAll([]*os.File{stdout, stderr, status})
		s.send(replyMsg{ID: m.ID, Err: err.Error()})
		return
	}
	s.mu.Lock()
	s.active++
	s.mu.Unlock()
	started := time.Now()
	s.send(replyMsg{ID: m.ID, PID: cmd.Process.Pid})

	var result []byte
	resDone := make(chan struct{})
	go func() {
		defer close(resDone)
		if resR != nil {
			result, _ = io.ReadAll(io.LimitReader(resR, 64<<10))
			io.Copy(io.Discard, resR)
			resR.Close()
		}
	}()
	go func() {
		werr := cmd.Wait()
		st := ExitStatus{PID: cmd.Process.Pid, Code: -1, Started: started, Ended: time.Now()}
		if ps := cmd.ProcessState; ps != nil {
			ws := ps.Sys().(syscall.WaitStatus)
			if ws.Exited() {
				st.Exited, st.Code = true, ws.ExitStatus()
			} else if ws.Signaled() {
				st.Signal = int(ws.Signal())
			}
			if ru, ok := ps.SysUsage().(*syscall.Rusage); ok {
				st.UserCPU = time.Duration(ru.Utime.Nano())
				st.SysCPU = time.Duration(ru.Stime.Nano())
				st.MaxRSSKB = int64(ru.Maxrss)
			}
		} else if werr != nil {
			st.Err = werr.Error()
		}
		// Output ends when the last writer is gone. With CLONE_NEWPID that
		// is when the child (pid 1 there) ended; without, a leaked
		// descendant could hold the pipe: stop waiting after a while.
		waitTimeout(&copiers, 10*time.Second)
		select {
		case <-resDone:
		case <-time.After(2 * time.Second):
		}
		st.Stdout, st.Stderr = loadStream(&outSt), loadStream(&errSt)
		if json.Valid(result) {
			st.Result = result
		}
		if status != nil {
			b, _ := json.Marshal(st)
			if _, err := status.WriteAt(b, 0); err != nil {
				st.Err = "write status file: " + err.Error()
			}
			status.Sync()
			status.Close()
		}
		closeAll([]*os.File{stdout, stderr})
		s.send(replyMsg{ID: m.ID, Exit: &st})
		s.mu.Lock()
		s.active--
		s.mu.Unlock()
		s.maybeExit()
	}()
}

var streamMu sync.Mutex

func loadStream(s *Stream) Stream {
	streamMu.Lock()
	defer streamMu.Unlock()
	return *s
}

// copyCapped copies src to dst until EOF; past limit bytes (0 = no limit)
// it keeps reading and counts what it drops, so the writer never blocks on
// a full pipe. A failing dst counts as dropped too.
func copyCapped(dst io.Writer, src io.Reader, limit int64, st *Stream) {
	buf := make([]byte, 64<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			chunk := buf[:n]
			streamMu.Lock()
			room := int64(len(chunk))
			if limit > 0 {
				room = max(0, min(room, limit-st.Bytes))
			}
			streamMu.Unlock()
			var w int
			if room > 0 {
				w, _ = dst.Write(chunk[:room])
			}
			streamMu.Lock()
			st.Bytes += int64(w)
			st.Dropped += int64(n - w)
			streamMu.Unlock()
		}
		if err != nil {
			return
		}
	}
}

func waitTimeout(wg *sync.WaitGroup, d time.Duration) {
	c := make(chan struct{})
	go func() { wg.Wait(); close(c) }()
	select {
	case <-c:
	case <-time.After(d):
	}
}
