package dnsproxy

import (
	"os"
	"testing"

	"github.com/arkgw/arkgw/reexec"
)

func TestMain(m *testing.M) {
	if reexec.Init() {
		return
	}
	os.Exit(m.Run())
}
