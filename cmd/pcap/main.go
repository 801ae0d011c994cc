// Command pcap is placed at /usr/bin/pcap inside every sandbox. It connects
// to the daemon's pcap socket and copies the experiment's packet stream to
// stdout. It needs no privileges.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "pcap: not available on this node yet")
	os.Exit(1)
}
