// Command arkgw-init is the daemon's small helper binary: the experiment's
// namespace holder (nsholder) and the sandbox init (sandboxinit), nothing
// else. The daemon starts it instead of re-executing itself because a Go
// binary's start-up cost grows with what it links: the arkgw binary takes
// about 9 ms from exec to main, this one well under 2 ms, and one of these
// starts with every experiment and every sandbox launch. Installed beside
// arkgw (the daemon looks for it there); without it the daemon re-executes
// itself, which works the same, only slower.
//
// It is not run by hand: argv[0] selects the role.
package main

import (
	"fmt"
	"os"

	_ "github.com/arkgw/arkgw/nsholder"
	"github.com/arkgw/arkgw/reexec"
	_ "github.com/arkgw/arkgw/sandbox/sandboxinit"
)

func main() {
	if reexec.Init() {
		return
	}
	fmt.Fprintln(os.Stderr, "arkgw-init: the namespace holder and sandbox init that arkgw starts; not for running by hand")
	os.Exit(2)
}
