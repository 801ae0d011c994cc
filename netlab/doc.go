// Package netlab builds throwaway network topologies for tests: hosts are
// network namespaces, links are veth pairs, and a standard "world" puts the
// node (the arkgw host) behind a default router that is also a fake
// Internet with DNS, echo and HTTP services written in Go.
//
// # Model
//
// A Topology is plain data (hosts, links, addresses, routes). Build turns
// it into kernel objects for one test and registers t.Cleanup to remove
// them, which also runs when the test fails. Every kernel operation goes
// through a namespace handle: netlink.NewHandleAt for links, addresses and
// routes; veth pairs are created directly in their two namespaces by fd, so
// nothing appears in the test process's own namespace. Code that must run
// inside a namespace (sockets, /proc/sys/net writes, AF_PACKET captures)
// runs through nsdo.In.
//
// # Safety
//
//   - Threads: a thread that enters a namespace is a locked goroutine's
//     thread; it switches back afterwards, and if it cannot, it exits still
//     locked so the Go runtime destroys it instead of reusing it in the wrong
//     namespace. The test's own goroutines never change namespace.
//   - Commands: Host.Start forks from such a locked thread (the child
//     inherits the thread's namespace); Host.Command returns an exec.Cmd that
//     re-executes the test binary as a tiny trampoline (dispatched from this
//     package's init, so no TestMain is needed) which enters the namespace
//     and execs the program.
//   - Names: namespaces are bind-mounted as RunDir/nl<pid>x<random>-<host>
//     (`ip netns` lists them), interface names are at most 15 bytes, so
//     concurrent tests and processes never collide.
//   - Cleanup: services and captures are stopped, processes left inside the
//     lab's namespaces are killed, the namespace files are unmounted and
//     deleted (which deletes their interfaces), and their absence verified.
//     Adopted namespaces (HostSpec.NetNSPath) are configured but never
//     deleted.
//   - The current namespace: code that is given no namespace (nsdo.Current(),
//     how the daemon runs on a node) is tested with the whole test process
//     inside a namespace, never one switched thread: InOwnNetNS re-runs the
//     test in a child test binary started in a fresh namespace (through the
//     trampoline), where a host with HostSpec.Current (NewCurrentWorld) is
//     that namespace. Current is refused anywhere else, so no test rewires
//     the namespace the test binary was started in.
//   - Readiness: Build returns when every link is operationally up and has
//     joined its IPv6 solicited-node groups (Host.WaitIfReady), so the first
//     packets of a test are not lost. IPv6 addresses are added with nodad,
//     and ICMP error rate limits are off in created namespaces, so
//     traceroute-like tests see every Time Exceeded.
//   - RunDir is made a shared mount point, as `ip netns add` does, so a
//     later `ip netns add` does not hide netlab's mounts under a new one.
//   - Sweep: a test binary killed before its cleanup leaves namespaces
//     behind; Sweep (called by Build) removes those whose creating pid is
//     dead and never touches namespaces of live processes.
package netlab
