package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"text/tabwriter"
	"time"

	"github.com/arkgw/arkgw/alert"
	"github.com/arkgw/arkgw/daemon"
	"github.com/arkgw/arkgw/flowlog"
)

// runFlows answers "which experiment sent this?" from the daemon's flow log.
func runFlows(args []string) int {
	fs := flag.NewFlagSet("flows", flag.ContinueOnError)
	sock := socketFlag(fs)
	exp := fs.String("experiment", "", "only this experiment")
	dst := fs.String("dst", "", "destination address or prefix")
	src := fs.String("src", "", "source address, inside or the node's public (NATed) one")
	port := fs.String("port", "", "destination port")
	sport := fs.String("sport", "", "source port, inside or public (NATed)")
	proto := fs.String("proto", "", "tcp, udp, icmp, icmpv6, gre or a number")
	at := fs.String("at", "", "flows open at this time (RFC 3339)")
	since := fs.String("since", "", "flows that ended at or after (RFC 3339 or a duration like 2h)")
	until := fs.String("until", "", "flows that started at or before (RFC 3339)")
	asJSON := fs.Bool("json", false, "print JSON")
	if _, err := parseInterspersed(fs, args); err != nil {
		return 2
	}
	v := url.Values{}
	for k, p := range map[string]*string{"experiment": exp, "dst": dst, "src": src, "port": port, "sport": sport, "proto": proto, "at": at, "until": until} {
		if *p != "" {
			v.Set(k, *p)
		}
	}
	if *since != "" {
		if d, err := time.ParseDuration(*since); err == nil {
			v.Set("since", time.Now().Add(-d).UTC().Format(time.RFC3339))
		} else {
			v.Set("since", *since)
		}
	}
	if _, err := flowlog.ParseQuery(v); err != nil {
		fmt.Fprintln(os.Stderr, "arkgw flows:", err)
		return 2
	}
	body, err := daemon.NewClient(*sock).Raw("/api/v1/flows?" + v.Encode())
	if err != nil {
		return fail(err)
	}
	if *asJSON {
		os.Stdout.Write(body)
		return 0
	}
	var res flowlog.Result
	if err := json.Unmarshal(body, &res); err != nil {
		return fail(err)
	}
	printFlows(os.Stdout, res)
	if res.OpenError != "" {
		fmt.Fprintf(os.Stderr, "arkgw flows: open flows unknown: %s\n", alert.Escape(res.OpenError))
	}
	if len(res.Flows)+len(res.Open) == 0 {
		fmt.Fprintln(os.Stderr, "arkgw flows: no matching flow")
		return 1
	}
	return 0
}

// printFlows writes the flow table. The experiment cell is escaped (the
// other cells are addresses, numbers and times): a table line never carries
// a control character to the terminal.
func printFlows(w io.Writer, res flowlog.Result) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "EXPERIMENT\tPROTO\tINSIDE\tPUBLIC SOURCE\tDESTINATION\tSTART\tEND\tBYTES OUT/IN")
	show := func(fl flowlog.Flow, open bool) {
		end := fl.End.Format("15:04:05")
		if open {
			end = "(open)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s:%d\t%s:%d\t%s:%d\t%s\t%s\t%d/%d\n", alert.Escape(fl.Experiment), alert.ProtoName(fl.Proto),
			fl.Src, fl.SPort, fl.NATSrc, fl.NATSPort, fl.Dst, fl.DPort,
			fl.Start.Format("2006-01-02 15:04:05"), end, fl.BytesOut, fl.BytesIn)
	}
	for _, fl := range res.Flows {
		show(fl, false)
	}
	for _, fl := range res.Open {
		show(fl, true)
	}
	tw.Flush()
}
