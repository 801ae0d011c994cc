package netlab

import (
	"context"
	"errors"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"
)

func TestPrivilegedCommand(t *testing.T) {
	l := Build(t, Topology{
		Hosts: []HostSpec{{Name: "a"}, {Name: "b"}},
		Links: []LinkSpec{{A: "a", B: "b", AIf: "ifa", BIf: "ifb", AAddrs: []string{"10.3.0.1/24"}, BAddrs: []string{"10.3.0.2/24"}}},
	})
	a := l.Host("a")
	t.Run("env-stdin-args", func(t *testing.T) {
		cmd := a.Command(context.Background(), "sh", "-c", `read x; echo "$x $NETLAB_T $1"; cat /proc/self/net/dev`)
		cmd.Args = append(cmd.Args, "sh", "arg1")
		cmd.Env = []string{"NETLAB_T=env", "PATH=/usr/bin:/bin"}
		cmd.Stdin = strings.NewReader("stdin\n")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		if !strings.HasPrefix(string(out), "stdin env arg1\n") || !strings.Contains(string(out), "ifa:") || strings.Contains(string(out), "ifb:") {
			t.Errorf("output:\n%s", out)
		}
	})
	t.Run("exit-status", func(t *testing.T) {
		err := a.Command(context.Background(), "sh", "-c", "exit 3").Run()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 3 {
			t.Errorf("exit: %v", err)
		}
		if err := a.Command(context.Background(), "no-such-program-netlab").Run(); err == nil {
			t.Error("missing program started")
		}
	})
	t.Run("cancel", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		start := time.Now()
		err := a.Command(ctx, "sleep", "30").Run()
		if err == nil || time.Since(start) > 10*time.Second {
			t.Errorf("cancel: %v after %v", err, time.Since(start))
		}
	})
	t.Run("start-credential", func(t *testing.T) {
		cmd := exec.Command("sh", "-c", "id -u; cat /proc/self/net/dev")
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		var out strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := a.Start(cmd); err != nil {
			t.Fatal(err)
		}
		if err := cmd.Wait(); err != nil {
			t.Fatalf("%v\n%s", err, out.String())
		}
		if !strings.HasPrefix(out.String(), "65534\n") || !strings.Contains(out.String(), "ifa:") {
			t.Errorf("output:\n%s", out.String())
		}
	})
	t.Run("ping-helper", func(t *testing.T) {
		if err := a.Ping("10.3.0.2", time.Second); err != nil {
			t.Error(err)
		}
		if err := a.Ping("10.3.9.9", time.Second); err == nil {
			t.Error("ping to an unreachable address succeeded")
		}
	})
	t.Run("threads-stay-home", func(t *testing.T) {
		// Hammer namespace switches, then check that no thread the runtime
		// hands out afterwards sits in a lab namespace.
		home, err := netns.GetFromPid(syscall.Getpid())
		if err != nil {
			t.Fatal(err)
		}
		defer home.Close()
		var wg sync.WaitGroup
		for i := 0; i < 64; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				h := a
				if i%2 == 1 {
					h = l.Host("b")
				}
				h.Do(func() error { runtime.Gosched(); return nil })
				if c, err := h.ListenPacket("udp", "127.0.0.1:0"); err == nil {
					c.Close()
				}
			}()
		}
		wg.Wait()
		var bad sync.Map
		for i := 0; i < 64; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				runtime.LockOSThread()
				defer runtime.UnlockOSThread()
				cur, err := netns.Get()
				if err != nil {
					bad.Store(i, err.Error())
					return
				}
				defer cur.Close()
				if !cur.Equal(home) {
					bad.Store(i, cur.String())
				}
			}()
		}
		wg.Wait()
		bad.Range(func(k, v any) bool {
			t.Errorf("goroutine %v ran on a thread in %v", k, v)
			return true
		})
	})
}
