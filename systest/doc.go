// Package systest is the system test tier (`make test-system`): the node as
// it really runs. It builds and installs the binaries with `make install`,
// starts `arkgw run` as its own process in a netlab node's network namespace
// entered with nsenter (no namespace handle passed in), its policy a file on
// disk, and drives it only through the CLI over the daemon's default socket,
// the owner page, the alerts file and what the fake Internet saw.
package systest
