package netlab

import (
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/arkgw/arkgw/nsdo"
)

// RunDir is where netlab bind-mounts the namespaces it creates, the same
// directory iproute2 uses, so `ip netns` lists them while a test runs.
const RunDir = "/run/netns"

// NamePrefix starts the file name of every namespace netlab creates:
// "nl<pid>x<random>-<host>". The pid lets Sweep tell stale namespaces of dead
// test processes from those of tests still running.
const NamePrefix = "nl"

var nameRE = regexp.MustCompile(`^nl([0-9]+)x([0-9a-z]+)-(.+)$`)

// nsName returns a fresh namespace file name for host.
func nsName(labID, host string) string {
	return fmt.Sprintf("%s%dx%s-%s", NamePrefix, os.Getpid(), labID, host)
}

// randID returns n random characters from [0-9a-z].
func randID(n int) string {
	const alphabet = "0123456789abcdefghijklmnopqrstuvwxyz"
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b)
}

// parseName reports the creating pid of a netlab namespace file name.
func parseName(name string) (pid int, ok bool) {
	m := nameRE.FindStringSubmatch(name)
	if m == nil {
		return 0, false
	}
	pid, err := strconv.Atoi(m[1])
	if err != nil || pid <= 0 {
		return 0, false
	}
	return pid, true
}

var (
	runDirOnce sync.Once
	runDirErr  error
)

// prepareRunDir makes RunDir a shared mount point the way `ip netns add`
// does. If it were a plain directory, the next `ip netns add` (from any
// program) would bind-mount RunDir over itself, and the namespace mounts
// made before would end up hidden underneath: invisible, unremovable by
// path, and keeping their namespaces alive.
func prepareRunDir() error {
	if err := os.MkdirAll(RunDir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", RunDir, err)
	}
	err := unix.Mount("", RunDir, "none", unix.MS_SHARED|unix.MS_REC, "")
	if errors.Is(err, unix.EINVAL) { // not a mount point yet
		if err := unix.Mount(RunDir, RunDir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("bind-mount %s on itself: %w", RunDir, err)
		}
		err = unix.Mount("", RunDir, "none", unix.MS_SHARED|unix.MS_REC, "")
	}
	if err != nil {
		return fmt.Errorf("make %s a shared mount: %w", RunDir, err)
	}
	return nil
}

// createNamed creates a new network namespace and bind-mounts it at
// RunDir/name. The unshare happens on a goroutine locked to its OS thread;
// the thread switches back to its original namespace afterwards, and if that
// fails it exits still locked, so the Go runtime destroys it rather than
// reusing a thread that sits in the wrong namespace.
func createNamed(name string) (nsdo.NS, string, error) {
	runDirOnce.Do(func() { runDirErr = prepareRunDir() })
	if runDirErr != nil {
		return nsdo.NS{}, "", runDirErr
	}
	path := filepath.Join(RunDir, name)
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return nsdo.NS{}, "", fmt.Errorf("create namespace file %s: %w", path, err)
	}
	f.Close()

	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("get current netns: %w", err)
			return
		}
		defer orig.Close()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("unshare netns: %w", err)
			return
		}
		self := fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid())
		merr := unix.Mount(self, path, "none", unix.MS_BIND, "")
		if merr != nil {
			merr = fmt.Errorf("bind-mount %s on %s: %w", self, path, merr)
		}
		if err := netns.Set(orig); err != nil {
			// Stay locked: the thread dies with this goroutine.
			errc <- errors.Join(merr, fmt.Errorf("return to original netns: %w (thread discarded)", err))
			return
		}
		runtime.UnlockOSThread()
		errc <- merr
	}()
	if err := <-errc; err != nil {
		removeNamed(path)
		return nsdo.NS{}, "", err
	}
	h, err := nsdo.Open(path)
	if err != nil {
		removeNamed(path)
		return nsdo.NS{}, "", err
	}
	return h, path, nil
}

// removeNamed unmounts and deletes a namespace file. The namespace itself
// (with its interfaces) goes away once no process, socket or fd holds it.
func removeNamed(path string) error {
	var errs []error
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		errs = append(errs, fmt.Errorf("unmount %s: %w", path, err))
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("remove %s: %w", path, err))
	}
	return errors.Join(errs...)
}

// nsID identifies a namespace: device and inode of its nsfs file.
type nsID struct{ dev, ino uint64 }

// nsOf returns the identity of the namespace bind-mounted at path; it fails
// when path is not a namespace (for example a file whose mount never
// happened because its creator died in between).
func nsOf(path string) (nsID, error) {
	var fs unix.Statfs_t
	if err := unix.Statfs(path, &fs); err != nil {
		return nsID{}, err
	}
	if fs.Type != unix.NSFS_MAGIC {
		return nsID{}, fmt.Errorf("%s is not a namespace file", path)
	}
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return nsID{}, err
	}
	return nsID{uint64(st.Dev), st.Ino}, nil
}

// killIn SIGKILLs every process whose network namespace is id and returns
// their pids. Only called for namespaces netlab created itself, so every
// process in them was started by a netlab test.
func killIn(id nsID) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	self := os.Getpid()
	var killed []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		var st unix.Stat_t
		if unix.Stat("/proc/"+e.Name()+"/ns/net", &st) != nil || st.Ino != id.ino || uint64(st.Dev) != id.dev {
			continue
		}
		if unix.Kill(pid, unix.SIGKILL) == nil {
			killed = append(killed, pid)
		}
	}
	return killed
}

// alive reports whether a process with this pid exists (EPERM counts as
// alive: someone else's process).
func alive(pid int) bool {
	err := unix.Kill(pid, 0)
	return err == nil || !errors.Is(err, syscall.ESRCH)
}

// Sweep removes stale netlab namespaces: those under RunDir whose name
// encodes a creating pid that no longer exists (a test binary that was
// killed or crashed before its cleanup ran). Processes still inside such a
// namespace are killed first. Namespaces of live processes — other tests
// running concurrently on this machine — are never touched. It returns the
// names it removed. Build calls it before creating anything.
func Sweep() ([]string, error) {
	ents, err := os.ReadDir(RunDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("netlab sweep: read %s: %w", RunDir, err)
	}
	var removed []string
	var errs []error
	for _, e := range ents {
		name := e.Name()
		if !strings.HasPrefix(name, NamePrefix) {
			continue
		}
		pid, ok := parseName(name)
		if !ok || alive(pid) {
			continue
		}
		path := filepath.Join(RunDir, name)
		if id, err := nsOf(path); err == nil {
			killIn(id)
		}
		if err := removeNamed(path); err != nil {
			errs = append(errs, fmt.Errorf("netlab sweep: %w", err))
			continue
		}
		removed = append(removed, name)
	}
	return removed, errors.Join(errs...)
}

// List returns the names of netlab namespaces currently under RunDir
// (of any process).
func List() ([]string, error) {
	ents, err := os.ReadDir(RunDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		if _, ok := parseName(e.Name()); ok {
			out = append(out, e.Name())
		}
	}
	return out, nil
}
