package pcapstream

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// Ready closes only once the socket exists (a sandbox binds it right after).
func TestReadyAfterSocketExists(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "pcap.sock")
	s, err := New(Config{Experiment: "x1", Iface: "lo", SocketPath: sock, SocketUID: os.Getuid(), SocketGID: os.Getgid()})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.Ready():
		t.Fatal("ready before Run")
	default:
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	select {
	case <-s.Ready():
	case <-time.After(5 * time.Second):
		t.Fatal("not ready after Run")
	}
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Type() != os.ModeSocket {
		t.Fatalf("ready but no socket: %v", err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
