package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"

	"github.com/arkgw/arkgw/configs"
	"github.com/arkgw/arkgw/container"
	"github.com/arkgw/arkgw/daemon"
	"github.com/arkgw/arkgw/store"
)

func init() { commands["container"] = runContainer }

const containerUsage = `usage:
  arkgw container build VERSION [-o DIR] [--arch A] [--mirror URL]... [--suite S] [--epoch N] [--pcap FILE] [--add SRC:DST]...
  arkgw container keygen --key FILE               new minisign key pair (FILE, FILE.pub)
  arkgw container sign IMAGE --key FILE           sign IMAGE's metadata (IMAGE.json.minisig)
  arkgw container import IMAGE [--config node.toml]  verify and install for this node
  arkgw container list [--json] [--config node.toml]
  arkgw container remove VERSION [--config node.toml]
`

func runContainer(args []string) int {
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, containerUsage)
		return 2
	}
	sub := map[string]func([]string) int{
		"build": containerBuild, "keygen": containerKeygen, "sign": containerSign,
		"import": containerImport, "list": containerList, "remove": containerRemove,
	}[args[0]]
	if sub == nil {
		fmt.Fprintf(os.Stderr, "arkgw container: unknown subcommand %q\n%s", args[0], containerUsage)
		return 2
	}
	return sub(args[1:])
}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

func containerBuild(args []string) int {
	fl := flag.NewFlagSet("container build", flag.ContinueOnError)
	out := fl.String("o", ".", "output directory")
	arch := fl.String("arch", container.HostArch(), "architecture (x86_64, aarch64, armv7l); a foreign one needs qemu-user-static")
	suite := fl.String("suite", container.DefaultSuite, "Debian suite")
	var mirrors multiFlag
	fl.Var(&mirrors, "mirror", "apt mirror (repeatable; default "+container.DefaultMirror+"); a snapshot.debian.org/archive/debian/TIMESTAMP URL pins every package")
	epoch := fl.Int64("epoch", 0, "SOURCE_DATE_EPOCH of the image (default $SOURCE_DATE_EPOCH, else 2026-01-01)")
	pcap := fl.String("pcap", "", "static pcap client for /usr/bin/pcap (default: pcap beside this binary)")
	var adds multiFlag
	fl.Var(&adds, "add", "extra file SRC:DST (absolute path in the image), repeatable; e.g. a test tool")
	pos, err := parseInterspersed(fl, args)
	if err != nil || len(pos) != 1 {
		fmt.Fprint(os.Stderr, containerUsage)
		return 2
	}
	if *epoch == 0 {
		if v := os.Getenv("SOURCE_DATE_EPOCH"); v != "" {
			fmt.Sscan(v, epoch)
		}
	}
	if *pcap == "" {
		if exe, err := os.Executable(); err == nil {
			*pcap = filepath.Join(filepath.Dir(exe), "pcap")
		}
	}
	extra := map[string]string{}
	for _, a := range adds {
		src, dst, ok := strings.Cut(a, ":")
		if !ok {
			fmt.Fprintf(os.Stderr, "arkgw container build: --add %q: want SRC:DST\n", a)
			return 2
		}
		extra[src] = dst
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "arkgw container build: run as root (mmdebstrap's root mode)")
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := container.Build(ctx, container.BuildOptions{
		Version: pos[0], OutDir: *out, Architecture: *arch, Suite: *suite, Mirrors: mirrors,
		SourceDateEpoch: *epoch, PcapBinary: *pcap, Extra: extra, Logger: newLogger(), Stderr: os.Stderr,
	})
	if err != nil {
		return fail(err)
	}
	fmt.Printf("image:    %s\nsha256:   %s\nsize:     %d\npackages: %s (%d)\nmetadata: %s (sign it: arkgw container sign %s --key K)\nbuilt in: %s (mmdebstrap %s, mksquashfs %s)\n",
		res.Image, res.Meta.SHA256, res.Meta.Size, container.PackagesPath(res.Image), len(res.Meta.Packages),
		container.MetaPath(res.Image), res.Image, res.Duration.Round(1e7), res.Debootstrap.Round(1e7), res.Squash.Round(1e7))
	return 0
}

func containerKeygen(args []string) int {
	fl := flag.NewFlagSet("container keygen", flag.ContinueOnError)
	key := fl.String("key", "", "secret key file to create (the public key goes to FILE.pub)")
	if _, err := parseInterspersed(fl, args); err != nil || *key == "" {
		fmt.Fprint(os.Stderr, containerUsage)
		return 2
	}
	pub, err := container.GenerateKey(*key)
	if err != nil {
		return fail(err)
	}
	fmt.Printf("secret key: %s (unencrypted; keep it offline)\npublic key: %s.pub\nnode.toml:  [containers] trusted_keys = [%q]\n", *key, *key, pub)
	return 0
}

func containerSign(args []string) int {
	fl := flag.NewFlagSet("container sign", flag.ContinueOnError)
	key := fl.String("key", "", "minisign secret key (password from $ARKGW_KEY_PASSWORD when encrypted)")
	pos, err := parseInterspersed(fl, args)
	if err != nil || len(pos) != 1 || *key == "" {
		fmt.Fprint(os.Stderr, containerUsage)
		return 2
	}
	k, err := container.LoadSecretKey(*key, os.Getenv("ARKGW_KEY_PASSWORD"))
	if err != nil {
		return fail(err)
	}
	if err := container.Sign(pos[0], k); err != nil {
		return fail(err)
	}
	fmt.Printf("signed: %s (key id %016X)\n", container.SigPath(pos[0]), k.ID())
	return 0
}

// containerNode finds the node policy for the container commands as the
// other subcommands do (--config, ARKGW_CONFIG, the running daemon's, the
// default file, the defaults) and says which on stderr.
func containerNode(src nodeSource) (*configs.NodePolicy, error) {
	pol, source, err := resolveNode(*src.config, *src.socket, defaultConfig)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(os.Stderr, "arkgw container: node policy %s\n", source)
	return pol.Node, nil
}

func trustOf(n *configs.NodePolicy) (container.Trust, error) {
	t := container.Trust{AllowUnsigned: n.Containers.AllowUnsigned}
	for _, s := range n.Containers.TrustedKeys {
		k, err := container.ParsePublicKey(s)
		if err != nil {
			return t, err
		}
		t.Keys = append(t.Keys, k)
	}
	return t, nil
}

func containerImport(args []string) int {
	fl := flag.NewFlagSet("container import", flag.ContinueOnError)
	src := nodeFlags(fl)
	pos, err := parseInterspersed(fl, args)
	if err != nil || len(pos) != 1 {
		fmt.Fprint(os.Stderr, containerUsage)
		return 2
	}
	n, err := containerNode(src)
	if err != nil {
		return fail(err)
	}
	t, err := trustOf(n)
	if err != nil {
		return fail(err)
	}
	in, err := container.Import(filepath.Join(n.StateDir, "containers"), pos[0], t)
	if err != nil {
		return fail(err)
	}
	signed := "unsigned (allowed by allow_unsigned)"
	if in.Signed {
		signed = "signature verified"
	}
	fmt.Printf("installed %s (%s) sha256 %s: %s\n", in.Version, in.Architecture, in.SHA256, signed)
	return 0
}

// usersOf maps container versions to the planned and running experiments
// that name them: from the daemon when it runs, else from its store.
func usersOf(n *configs.NodePolicy) (map[string][]string, error) {
	var exps []store.Experiment
	if list, err := daemon.NewClient(envOr("ARKGW_SOCKET", "")).List(); err == nil {
		for _, v := range list {
			exps = append(exps, v.Experiment)
		}
	} else {
		st, err2 := store.Open(n.StateDir)
		if err2 != nil {
			return nil, fmt.Errorf("cannot tell which experiments use which container: daemon: %v; store: %v", err, err2)
		}
		list, err := st.List()
		st.Close()
		if err != nil {
			return nil, err
		}
		for _, x := range list {
			exps = append(exps, *x)
		}
	}
	out := map[string][]string{}
	for _, x := range exps {
		if x.State != store.Planned && x.State != store.Running {
			continue
		}
		m, err := configs.ParseManifest(x.ManifestName, []byte(x.Manifest), x.ManifestDir)
		if err != nil {
			continue
		}
		out[m.Container] = append(out[m.Container], x.ID)
	}
	return out, nil
}

func containerList(args []string) int {
	fl := flag.NewFlagSet("container list", flag.ContinueOnError)
	src := nodeFlags(fl)
	asJSON := fl.Bool("json", false, "print JSON")
	if _, err := parseInterspersed(fl, args); err != nil {
		return 2
	}
	n, err := containerNode(src)
	if err != nil {
		return fail(err)
	}
	list, err := container.List(filepath.Join(n.StateDir, "containers"))
	if err != nil {
		return fail(err)
	}
	users, uerr := usersOf(n)
	type row struct {
		container.Installed
		UsedBy []string `json:"used_by"`
	}
	var rows []row
	for _, x := range list {
		rows = append(rows, row{x, users[x.Version]})
	}
	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		enc.Encode(rows)
		return 0
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VERSION\tARCH\tSIZE\tSHA256\tSIGNED\tMOUNTED\tUSED BY")
	for _, r := range rows {
		if r.Dir {
			fmt.Fprintf(tw, "%s\t-\t-\t(plain directory)\t-\t-\t%s\n", r.Version, strings.Join(r.UsedBy, ","))
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\t%.1f MB\t%s\t%v\t%v\t%s\n", r.Version, r.Architecture, float64(r.Size)/1e6, r.SHA256, r.Signed, r.Mounted, strings.Join(r.UsedBy, ","))
	}
	tw.Flush()
	if uerr != nil {
		fmt.Fprintln(os.Stderr, "arkgw container list:", uerr)
	}
	return 0
}

func containerRemove(args []string) int {
	fl := flag.NewFlagSet("container remove", flag.ContinueOnError)
	src := nodeFlags(fl)
	pos, err := parseInterspersed(fl, args)
	if err != nil || len(pos) != 1 {
		fmt.Fprint(os.Stderr, containerUsage)
		return 2
	}
	n, err := containerNode(src)
	if err != nil {
		return fail(err)
	}
	users, err := usersOf(n)
	if err != nil {
		return fail(fmt.Errorf("remove %s: %w", pos[0], err))
	}
	if err := container.Remove(filepath.Join(n.StateDir, "containers"), pos[0], users[pos[0]]); err != nil {
		return fail(err)
	}
	fmt.Printf("removed %s\n", pos[0])
	return 0
}
