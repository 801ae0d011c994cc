// Package reexec lets the arkgw binary (and test binaries) re-execute
// themselves as a small helper process: the namespace holder, the sandbox
// init. Go cannot run code between fork and exec, so work that must happen
// in a fresh single-threaded process (joining or creating a user namespace,
// pivot_root, seccomp) happens in a re-executed copy of the binary that
// dispatches on argv[0] before anything else runs.
//
// main (and TestMain in packages whose tests start such helpers) must call
// Init first and return when it reports true.
package reexec

import (
	"fmt"
	"os"
	"os/exec"
	"sync"
)

var (
	mu       sync.Mutex
	handlers = map[string]func(){}
)

// Register makes fn run, instead of main, in a process started with
// Command(name, ...). Call it from an init function. fn must not return
// normally unless exiting 0 is what it means.
func Register(name string, fn func()) {
	mu.Lock()
	defer mu.Unlock()
	if _, dup := handlers[name]; dup {
		panic(fmt.Sprintf("reexec: %q registered twice", name))
	}
	handlers[name] = fn
}

// Init runs the registered handler if this process was started as one and
// reports whether it did (the caller must then return from main at once).
func Init() bool {
	mu.Lock()
	fn, ok := handlers[os.Args[0]]
	mu.Unlock()
	if !ok {
		return false
	}
	fn()
	return true
}

// Self is the path used to re-execute the running binary.
const Self = "/proc/self/exe"

// Command returns a command that re-executes this binary as handler name.
// The caller sets SysProcAttr (namespaces, credentials), ExtraFiles and Env.
func Command(name string, args ...string) *exec.Cmd {
	return &exec.Cmd{
		Path: Self,
		Args: append([]string{name}, args...),
	}
}
