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
	"text/tabwriter"
	"time"

	"github.com/arkgw/arkgw/daemon"
	"github.com/arkgw/arkgw/outputs"
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
			fmt.Fprintln(os.Stderr, "  "+c)
		}
		return 1
	}
	fmt.Fprintln(os.Stderr, "arkgw:", err)
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
		var contacts []string
		for _, c := range x.Experimenters {
			contacts = append(contacts, c.Email)
		}
		when := ""
		switch x.State {
		case "planned":
			when = "starts " + x.Start.UTC().Format("2006-01-02 15:04")
		case "running":
			when = "ends in " + x.Deadline.Sub(now).Truncate(time.Second).String()
		default:
			when = x.Reason
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
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\n", x.ID, x.State, x.Title, strings.Join(contacts, ","), when, bytes, rate, x.Alerts, resultsText(x.Outputs))
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
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return 2
	}
	if len(pos) != 1 {
		fmt.Fprintln(os.Stderr, "usage: arkgw logs ID [--stderr]")
		return 2
	}
	out, err := daemon.NewClient(*sock).Logs(pos[0], *stderr)
	if err != nil {
		return fail(err)
	}
	os.Stdout.Write(out)
	return 0
}
