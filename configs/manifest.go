package configs

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// MaxSpoof is the most spoofed sources, and the most spoof destinations, a
// manifest may list.
const MaxSpoof = 4

// Architectures a manifest may name ("any" = all).
var Architectures = []string{"any", "x86_64", "aarch64", "armv7l"}

// Manifest is an experimenter's declaration of what the experiment does.
// Optional limits are pointers: nil means "not given", and the node's value
// applies.
type Manifest struct {
	Source string // file name as given to the parser
	Dir    string // absolute directory of the manifest

	Title     string
	Container string
	// ContainerSHA256 pins the container image (hex sha256 of the
	// squashfs, as `arkgw container build` prints it); "" = not pinned.
	ContainerSHA256 string
	Architectures   []string
	Command         []string
	Files           string    // absolute path of the files directory; "" = none
	Start           time.Time // zero = as soon as submitted
	Experimenters   []Contact

	MaxHours    *float64
	CPU         string // minimal | moderate | substantial (default minimal)
	MaxRAMMB    *int64
	MaxMbps     *float64
	MaxMBPerDay *int64 // 0 = no daily maximum requested
	TmpfsMB     *int64

	IP string // "ipv4", "ipv6", "both", or "" (what the node permits)

	DNSAny bool
	DNS    []string // normalized FQDN suffixes, in file order

	ICMP         []ICMPEntry
	TCP, UDP     []DestEntry
	SynOnlyPorts []PortRange // one per item, in file order
	Protocols    []uint8     // in file order

	SpoofSources      []netip.Addr
	SpoofDestinations []netip.Addr

	BackChannel netip.AddrPort // zero = none
}

// ICMPEntry is one item of a manifest's icmp list.
type ICMPEntry struct {
	Text string
	Any  bool
	Type ICMPType
}

type rawManifest struct {
	Title           string       `toml:"title"`
	Container       string       `toml:"container"`
	ContainerSHA256 string       `toml:"container_sha256"`
	Architectures   []string     `toml:"architectures"`
	Command         []string     `toml:"command"`
	Files           string       `toml:"files"`
	Start           any          `toml:"start"`
	MaxHours        float64      `toml:"max_hours"`
	CPU             string       `toml:"cpu"`
	MaxRAMMB        int64        `toml:"max_ram_mb"`
	MaxMbps         float64      `toml:"max_mbps"`
	MaxMBPerDay     int64        `toml:"max_mb_per_day"`
	IP              string       `toml:"ip"`
	DNS             []string     `toml:"dns"`
	ICMP            []any        `toml:"icmp"`
	UDP             []string     `toml:"udp"`
	TCP             []string     `toml:"tcp"`
	SynOnlyPorts    []any        `toml:"syn_only_ports"`
	Protocols       []any        `toml:"protocols"`
	BackChannel     string       `toml:"back_channel"`
	TmpfsMB         int64        `toml:"tmpfs_mb"`
	Experimenters   []rawContact `toml:"experimenters"`
	Spoof           rawSpoof     `toml:"spoof"`
}

type rawContact struct {
	Name  string `toml:"name"`
	Email string `toml:"email"`
}

type rawSpoof struct {
	Sources      []string `toml:"sources"`
	Destinations []string `toml:"destinations"`
}

// LoadManifest reads and validates a manifest; its files directory is
// resolved relative to the manifest's directory and must exist.
func LoadManifest(path string) (*Manifest, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read manifest: %w", err)
	}
	m, err := ParseManifest(path, data, filepath.Dir(path))
	if err != nil {
		return nil, err
	}
	if m.Files != "" {
		st, err := os.Stat(m.Files)
		if err != nil || !st.IsDir() {
			return nil, &FieldError{File: path, Field: "files", Value: m.Files, Msg: "not a directory; put the experiment's files in a directory beside the manifest"}
		}
	}
	return m, nil
}

// ParseManifest parses and validates a manifest; name is the file name used
// in messages, dir the directory that files is relative to. It does not
// touch the file system (beyond making dir absolute). All problems are
// reported (joined), not just the first.
func ParseManifest(name string, data []byte, dir string) (*Manifest, error) {
	var r rawManifest
	md, err := toml.Decode(string(data), &r)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	e := &errs{file: name}
	for _, k := range md.Undecoded() {
		e.add(k.String(), "", "unknown key; check the spelling against POLICY.md or configs/examples")
	}
	absDir, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("%s: manifest directory %q: %w", name, dir, err)
	}
	m := &Manifest{Source: name, Dir: absDir}

	m.Title = strings.TrimSpace(r.Title)
	if m.Title == "" {
		e.add("title", "", "missing; give the experiment a title, shown to node owners and in alerts")
	} else if len(m.Title) > 200 || strings.ContainsAny(m.Title, "\n\r") {
		e.add("title", "", "must be one line of at most 200 characters")
	}
	m.Container = strings.TrimSpace(r.Container)
	if m.Container == "" {
		e.add("container", "", "missing; name the container version the experiment was built for, e.g. \"ark-2026.1\"")
	} else if !ValidContainerVersion(m.Container) {
		e.add("container", r.Container, "not a container version name (1-64 of A-Z a-z 0-9 . _ -, starting with a letter or digit); use e.g. \"ark-2026.1\"")
	}
	m.ContainerSHA256 = strings.ToLower(strings.TrimSpace(r.ContainerSHA256))
	if m.ContainerSHA256 != "" && !isSHA256Hex(m.ContainerSHA256) {
		e.add("container_sha256", r.ContainerSHA256, "not a sha256 (64 hex digits); copy it from the image's .sha256 file or `arkgw container list`")
	}
	if !md.IsDefined("architectures") {
		m.Architectures = []string{"any"}
	}
	for i, a := range r.Architectures {
		if !slices.Contains(Architectures, a) {
			e.add(idx("architectures", i), a, "unknown architecture; use %s", strings.Join(Architectures, ", "))
			continue
		}
		m.Architectures = append(m.Architectures, a)
	}
	if md.IsDefined("architectures") && len(r.Architectures) == 0 {
		e.add("architectures", "", "empty; write [\"any\"] or the architectures the experiment runs on")
	}
	if len(r.Command) == 0 {
		e.add("command", "", "empty; give the program and its arguments, e.g. [\"/experiment/run.sh\"]")
	} else if strings.TrimSpace(r.Command[0]) == "" {
		e.add("command[0]", "", "empty program name; give the program to run, e.g. \"/experiment/run.sh\"")
	}
	for i, a := range r.Command {
		if strings.ContainsRune(a, 0) {
			e.add(idx("command", i), "", "contains a NUL byte; remove it")
		}
	}
	m.Command = r.Command
	if r.Files != "" {
		f := filepath.Clean(r.Files)
		switch {
		case filepath.IsAbs(f):
			e.add("files", r.Files, "must be relative to the manifest's directory; write e.g. \"payload\"")
		case f == ".." || strings.HasPrefix(f, "../"):
			e.add("files", r.Files, "leaves the manifest's directory; put the files in a directory beside the manifest")
		default:
			m.Files = filepath.Join(absDir, f)
		}
	}
	switch t := r.Start.(type) {
	case nil:
	case time.Time:
		switch t.Location().String() {
		case "datetime-local", "date-local", "time-local":
			e.add("start", fmt.Sprint(r.Start), "needs a date, a time and a time zone; write e.g. 2026-12-01T00:00:00Z")
		default:
			m.Start = t.UTC()
		}
	case string:
		st, err := time.Parse(time.RFC3339, t)
		if err != nil {
			e.add("start", t, "not a date and time; write a TOML datetime such as 2026-12-01T00:00:00Z")
		} else {
			m.Start = st.UTC()
		}
	default:
		e.add("start", fmt.Sprint(r.Start), "not a date and time; write a TOML datetime such as 2026-12-01T00:00:00Z")
	}

	if len(r.Experimenters) == 0 {
		e.add("experimenters", "", "none given; add an [[experimenters]] table with name and email")
	}
	for i, c := range r.Experimenters {
		f := idx("experimenters", i)
		ok := true
		if strings.TrimSpace(c.Name) == "" {
			e.add(f+".name", "", "empty; give the experimenter's name")
			ok = false
		}
		if err := ValidEmail(c.Email); err != nil {
			e.addErr(f+".email", c.Email, err)
			ok = false
		}
		if ok {
			m.Experimenters = append(m.Experimenters, Contact{Name: strings.TrimSpace(c.Name), Email: c.Email})
		}
	}

	if md.IsDefined("max_hours") {
		if !(r.MaxHours > 0) || r.MaxHours > 24*366 {
			e.add("max_hours", fmtFloat(r.MaxHours), "the duration must be more than 0 hours (at most 8784)")
		} else {
			m.MaxHours = &r.MaxHours
		}
	}
	m.CPU = "minimal"
	if md.IsDefined("cpu") {
		if !slices.Contains(CPUClasses, r.CPU) {
			e.add("cpu", r.CPU, "unknown CPU class; use %s", strings.Join(CPUClasses, ", "))
		} else {
			m.CPU = r.CPU
		}
	}
	if md.IsDefined("max_ram_mb") {
		if r.MaxRAMMB <= 0 {
			e.add("max_ram_mb", strconv.FormatInt(r.MaxRAMMB, 10), "must be more than 0 MB")
		} else {
			m.MaxRAMMB = &r.MaxRAMMB
		}
	}
	if md.IsDefined("max_mbps") {
		if !(r.MaxMbps > 0) || r.MaxMbps > 100_000 {
			e.add("max_mbps", fmtFloat(r.MaxMbps), "must be more than 0 Mbit/s (at most 100000)")
		} else {
			m.MaxMbps = &r.MaxMbps
		}
	}
	if md.IsDefined("max_mb_per_day") {
		if r.MaxMBPerDay < 0 {
			e.add("max_mb_per_day", strconv.FormatInt(r.MaxMBPerDay, 10), "must not be negative; 0 means no daily maximum")
		} else {
			m.MaxMBPerDay = &r.MaxMBPerDay
		}
	}
	if md.IsDefined("tmpfs_mb") {
		if r.TmpfsMB < 0 {
			e.add("tmpfs_mb", strconv.FormatInt(r.TmpfsMB, 10), "must not be negative; 0 means no tmpfs")
		} else {
			m.TmpfsMB = &r.TmpfsMB
		}
	}
	if md.IsDefined("ip") {
		switch r.IP {
		case "ipv4", "ipv6", "both":
			m.IP = r.IP
		default:
			e.add("ip", r.IP, "use \"ipv4\", \"ipv6\" or \"both\"")
		}
	}

	for i, s := range r.DNS {
		if strings.EqualFold(strings.TrimSpace(s), "any") {
			m.DNSAny = true
			continue
		}
		n, err := NormalizeName(s)
		if err != nil {
			e.addErr(idx("dns", i), s, err)
			continue
		}
		m.DNS = append(m.DNS, n)
	}
	for i, v := range r.ICMP {
		any, t, text, err := icmpItem(v)
		if err != nil {
			e.addErr(idx("icmp", i), text, err)
			continue
		}
		m.ICMP = append(m.ICMP, ICMPEntry{Text: text, Any: any, Type: t})
	}
	m.TCP = destEntries(e, "tcp", r.TCP)
	m.UDP = destEntries(e, "udp", r.UDP)
	for i, v := range r.SynOnlyPorts {
		pr, err := portItem(v)
		if err != nil {
			e.addErr(idx("syn_only_ports", i), fmt.Sprint(v), err)
			continue
		}
		m.SynOnlyPorts = append(m.SynOnlyPorts, pr)
	}
	for i, v := range r.Protocols {
		n, text, err := protocolItem(v)
		if err != nil {
			e.addErr(idx("protocols", i), text, err)
			continue
		}
		m.Protocols = append(m.Protocols, n)
	}

	if n := len(r.Spoof.Sources); n > MaxSpoof {
		e.add("spoof.sources", "", "%d entries, at most %d allowed; drop some", n, MaxSpoof)
	}
	if n := len(r.Spoof.Destinations); n > MaxSpoof {
		e.add("spoof.destinations", "", "%d entries, at most %d allowed; drop some", n, MaxSpoof)
	}
	for i, s := range r.Spoof.Sources {
		a, err := ParseAddr(s)
		if err != nil {
			e.addErr(idx("spoof.sources", i), s, err)
			continue
		}
		m.SpoofSources = append(m.SpoofSources, a)
	}
	for i, s := range r.Spoof.Destinations {
		a, err := ParseAddr(s)
		if err != nil {
			e.addErr(idx("spoof.destinations", i), s, err)
			continue
		}
		m.SpoofDestinations = append(m.SpoofDestinations, a)
	}
	if len(m.SpoofDestinations) > 0 {
		for i, src := range m.SpoofSources {
			if !slices.ContainsFunc(m.SpoofDestinations, func(d netip.Addr) bool { return d.Is4() == src.Is4() }) {
				e.add(idx("spoof.sources", i), src.String(), "no spoof destination of the same address family; add one or drop this source")
			}
		}
	}
	if len(r.Spoof.Sources) > 0 && len(r.Spoof.Destinations) == 0 {
		e.add("spoof.destinations", "", "empty, but spoof.sources is set: spoofed packets may only go to listed destinations; add them")
	}
	if len(r.Spoof.Destinations) > 0 && len(r.Spoof.Sources) == 0 {
		e.add("spoof.sources", "", "empty, but spoof.destinations is set; add the spoofed source addresses or drop [spoof]")
	}

	if r.BackChannel != "" {
		ap, err := parseBackChannel(r.BackChannel)
		if err != nil {
			e.addErr("back_channel", r.BackChannel, err)
		} else {
			m.BackChannel = ap
		}
	}

	if len(e.list) > 0 {
		return nil, errors.Join(e.list...)
	}
	return m, nil
}

func parseBackChannel(s string) (netip.AddrPort, error) {
	ap, err := netip.ParseAddrPort(strings.TrimSpace(s))
	if err != nil || ap.Addr().Zone() != "" {
		return netip.AddrPort{}, errors.New("not ADDRESS:PORT; write e.g. \"203.0.113.7:9000\" or \"[2001:db8::7]:9000\" (an IP address, not a name)")
	}
	a := ap.Addr()
	if a.Is4In6() {
		return netip.AddrPort{}, errors.New("IPv4-mapped IPv6 address; write the IPv4 address")
	}
	if ap.Port() == 0 {
		return netip.AddrPort{}, errors.New("port 0 is not a port; use 1-65535")
	}
	if a.IsUnspecified() || a.IsMulticast() || a.IsLoopback() {
		return netip.AddrPort{}, errors.New("not a unicast address; give the experimenter's server address")
	}
	return ap, nil
}

func isSHA256Hex(s string) bool {
	if len(s) != 64 {
		return false
	}
	for _, c := range s {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// ValidContainerVersion is the one rule for a container version's name,
// which names a directory and an image file on the node: 1-64 of
// [A-Za-z0-9._-], not starting with '.', '_' or '-'. (No regexp: the
// sandbox init imports this package, and package-level regexps cost every
// re-executed start.)
func ValidContainerVersion(v string) bool {
	if v == "" || len(v) > 64 {
		return false
	}
	for i, c := range v {
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if !alnum && (i == 0 || (c != '.' && c != '_' && c != '-')) {
			return false
		}
	}
	return true
}
