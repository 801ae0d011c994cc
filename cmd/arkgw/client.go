package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/mattn/go-isatty"

	"github.com/arkgw/arkgw/alert"
	"github.com/arkgw/arkgw/daemon"
	"github.com/arkgw/arkgw/outputs"
	"github.com/arkgw/arkgw/store"
)

// socketFlag adds --socket to a command's flags.
func socketFlag(fs *flag.FlagSet) *string {
	return fs.String("socket", envOr("ARKGW_SOCKET", daemon.DefaultSocket), "daemon socket")
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// parseInterspersed lets flags follow positional arguments
// (`arkgw logs x1 --stderr`).
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

func fail(err error) int {
	var ref *daemon.RefusedError
	if errors.As(err, &ref) {
		fmt.Fprintln(os.Stderr, "arkgw: refused by node policy:")
		for _, c := range ref.Conflicts {
			fmt.Fprintln(os.Stderr, "  "+alert.Escape(c))
		}
		return 1
	}
	// The daemon's messages quote manifests and names.
	fmt.Fprintln(os.Stderr, "arkgw:", escapeText(err.Error()))
	return 1
}

func runSubmit(args []string) int {
	fs := flag.NewFlagSet("submit", flag.ContinueOnError)
	sock := socketFlag(fs)
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return 2
	}
	if len(pos) != 1 {
		fmt.Fprintln(os.Stderr, "usage: arkgw submit MANIFEST.toml")
		return 2
	}
	path, _ := filepath.Abs(pos[0])
	data, err := os.ReadFile(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, "arkgw:", err)
		return 2
	}
	x, err := daemon.NewClient(*sock).Submit(data, filepath.Base(path), filepath.Dir(path))
	if err != nil {
		return fail(err)
	}
	fmt.Println(x.ID)
	if x.Start.After(time.Now().Add(time.Second)) {
		fmt.Fprintf(os.Stderr, "arkgw: %s planned to start at %s\n", x.ID, x.Start.UTC().Format(time.RFC3339))
	}
	return 0
}

func runList(args []string) int {
	fs := flag.NewFlagSet("list", flag.ContinueOnError)
	sock := socketFlag(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	if _, err := parseInterspersed(fs, args); err != nil {
		return 2
	}
	list, err := daemon.NewClient(*sock).List()
	if err != nil {
		return fail(err)
	}
	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		enc.Encode(list)
		return 0
	}
	printList(os.Stdout, list, time.Now())
	return 0
}

func printList(w io.Writer, list []daemon.ExperimentView, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTATE\tTITLE\tCONTACTS\tWHEN\tBYTES TODAY\tRATE\tALERTS\tRESULTS")
	for _, x := range list {
		// Title, contacts and reasons are the experimenter's text:
		// escaped, so no control character reaches the terminal.
		var contacts []string
		for _, c := range x.Experimenters {
			contacts = append(contacts, alert.Escape(c.Email))
		}
		when := ""
		switch x.State {
		case "planned":
			when = "starts " + x.Start.UTC().Format("2006-01-02 15:04")
		case "running":
			when = "ends in " + x.Deadline.Sub(now).Truncate(time.Second).String()
		default:
			when = alert.Escape(x.Reason)
			if x.Reason == store.ReasonRefused || x.Reason == store.ReasonLost || x.Reason == store.ReasonPolicy {
				when += ": " + alert.Escape(clip(x.Detail, 100))
			}
			if x.ExitCode != 0 {
				when += fmt.Sprintf(" (exit %d)", x.ExitCode)
			}
		}
		bytes, rate := fmt.Sprint(x.BytesUp+x.BytesDown), "-"
		if x.Live != nil {
			bytes = fmt.Sprint(x.Live.BytesUpToday + x.Live.BytesDownToday)
			if x.Live.BudgetBytes > 0 {
				bytes += fmt.Sprintf("/%d", x.Live.BudgetBytes)
			}
			if x.Live.RateMbps > 0 {
				rate = fmt.Sprintf("%.3gMbit/s", x.Live.RateMbps)
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\n", alert.Escape(x.ID), alert.Escape(x.State), alert.Escape(x.Title), strings.Join(contacts, ","), when, bytes, rate, x.Alerts, resultsText(x.Outputs))
	}
	tw.Flush()
}

// resultsText says whether an experiment's results are in the object store.
func resultsText(p *outputs.Progress) string {
	switch {
	case p == nil:
		return "-" // [outputs] off, or never shipped
	case p.Shipped:
		return "shipped"
	case p.PendingBytes > 0:
		return fmt.Sprintf("%d bytes to ship", p.PendingBytes)
	}
	return "shipping"
}

func runStop(args []string) int {
	fs := flag.NewFlagSet("stop", flag.ContinueOnError)
	sock := socketFlag(fs)
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return 2
	}
	if len(pos) != 1 {
		fmt.Fprintln(os.Stderr, "usage: arkgw stop ID")
		return 2
	}
	x, err := daemon.NewClient(*sock).Stop(pos[0])
	if err != nil {
		return fail(err)
	}
	fmt.Printf("%s %s (%s)\n", x.ID, x.State, x.Reason)
	return 0
}

func runLogs(args []string) int {
	fs := flag.NewFlagSet("logs", flag.ContinueOnError)
	sock := socketFlag(fs)
	stderr := fs.Bool("stderr", false, "show stderr instead of stdout")
	raw := fs.Bool("raw", false, "write the bytes as they are even to a terminal (default: control characters escaped on a terminal)")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return 2
	}
	if len(pos) != 1 {
		fmt.Fprintln(os.Stderr, "usage: arkgw logs ID [--stderr] [--raw]")
		return 2
	}
	c := daemon.NewClient(*sock)
	// A command that never ran has no output to explain itself: say why
	// (its stderr stream carries the same line, written by the daemon).
	defer func() {
		if x, err := c.Get(pos[0]); err == nil && x.State == store.Completed && x.Reason == store.ReasonRefused && !*stderr {
			fmt.Fprintf(os.Stderr, "arkgw: experiment %s failed to start (exit %d): %s\n", alert.Escape(x.ID), x.ExitCode, alert.Escape(x.Detail))
		}
	}()
	if *raw || !isatty.IsTerminal(os.Stdout.Fd()) {
		return printLogs(c, pos[0], *stderr, os.Stdout, os.Stderr)
	}
	// The output is the experiment's: on a terminal its control sequences
	// are shown, not obeyed.
	tw := &terminalWriter{w: os.Stdout}
	code := printLogs(c, pos[0], *stderr, tw, os.Stderr)
	tw.Flush()
	return code
}

// printLogs streams an experiment's whole output to stdout. A copy cut
// short (the daemon went away, a write failed) says so on stderr and exits
// 1; output the node's cap dropped is said on stderr too, so stdout stays
// the experiment's bytes.
func printLogs(c *daemon.Client, id string, stderr bool, stdout, errw io.Writer) int {
	stream := "stdout"
	if stderr {
		stream = "stderr"
	}
	info, err := c.LogsTo(id, stderr, stdout)
	if err != nil {
		if errors.Is(err, syscall.EPIPE) {
			return 0 // the reader (head, a pager) went away
		}
		fmt.Fprintf(errw, "arkgw logs: %s; the %s shown is incomplete\n", escapeText(err.Error()), stream)
		return 1
	}
	switch {
	case info.Dropped > 0:
		fmt.Fprintf(errw, "arkgw logs: %s %s: %d bytes shown; %d more bytes were dropped by the node's output cap ([limits].output_mb)\n", alert.Escape(id), stream, info.Bytes, info.Dropped)
	case info.AtCap > 0:
		fmt.Fprintf(errw, "arkgw logs: %s %s: %d bytes shown; the output reached the node's cap of %d bytes ([limits].output_mb) and what it writes past it is dropped\n", alert.Escape(id), stream, info.Bytes, info.AtCap)
	}
	return 0
}

// clip shortens s to at most n runes for a table cell.
func clip(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}
