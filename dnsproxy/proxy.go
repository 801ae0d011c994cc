// Package dnsproxy is arkgw's allowlisting DNS proxy: one instance per
// experiment listens (UDP and TCP) on the experiment's gateway addresses,
// answers names outside the experiment's allowlist with REFUSED (or NXDOMAIN)
// and an alert, and forwards the others to the node's upstream resolvers.
//
// The request path is described step by step in README.md. The proxy does not
// decide policy: it is given the allowlist (configs.Effective DNSAny and
// DNSNames) and the node's options.
package dnsproxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/miekg/dns"
	"golang.org/x/sys/unix"
	"golang.org/x/time/rate"

	"github.com/arkgw/arkgw/alert"
	"github.com/arkgw/arkgw/configs"
	"github.com/arkgw/arkgw/nsdo"
)

// Defaults for the zero values of Config.
const (
	DefaultTimeout       = 1500 * time.Millisecond
	DefaultQueryTimeout  = 4 * time.Second
	DefaultMaxTCPQueries = 100000
	DefaultTCPIdle       = 10 * time.Second
	DefaultMaxTCPConns   = 128
	DefaultMaxInflight   = 2048
	DefaultCacheSize     = 4096
	DefaultCacheMaxTTL   = time.Hour
	DefaultAlertInterval = 10 * time.Second
	DefaultAlertRate     = 10
	DefaultAlertBurst    = 100
	// serverUDPSize is the EDNS buffer size the proxy advertises to clients.
	serverUDPSize = 1232
)

// Config configures one proxy (one experiment).
type Config struct {
	// Experiment is the experiment id, used in alerts, logs and metrics.
	Experiment string
	// NS is the network namespace the listeners and upstream sockets are
	// opened in (the node's); the zero value is the current one.
	NS nsdo.NS
	// Listen are the "ip:port" addresses served on UDP and TCP (the
	// experiment's GW4 and GW6 on port 53). Port 0 picks a free port, the
	// same for UDP and TCP; see Addrs.
	Listen []string
	// Upstreams are "ip" or "ip:port" resolvers (node policy). When empty,
	// the nameservers of ResolvConf are used.
	Upstreams []string
	// ResolvConf is read when Upstreams is empty (DefaultResolvConf).
	ResolvConf string

	// Any allows every name; otherwise Names (domains allowing themselves and
	// every subdomain) are the allowlist.
	Any   bool
	Names []string
	// DenyNXDomain answers denied names with NXDOMAIN instead of REFUSED.
	DenyNXDomain bool
	// QPS limits queries per second (burst: one second's worth); 0 = no limit.
	QPS int
	// Clients, when non-empty, are the source prefixes answered (the
	// experiment's link); queries from elsewhere are dropped, so the proxy
	// cannot be used as a reflector with spoofed sources.
	Clients []netip.Prefix

	Alerts alert.Sink
	Logger hclog.Logger

	Timeout       time.Duration // per upstream attempt (DefaultTimeout)
	QueryTimeout  time.Duration // whole query (DefaultQueryTimeout)
	MaxTCPQueries int           // per client TCP connection (DefaultMaxTCPQueries)
	TCPIdle       time.Duration // client TCP idle timeout (DefaultTCPIdle)
	MaxTCPConns   int           // concurrent client TCP connections (DefaultMaxTCPConns)
	MaxInflight   int           // forwarded queries in flight (DefaultMaxInflight)
	CacheSize     int           // entries; 0 = DefaultCacheSize, negative = no cache
	CacheMaxTTL   time.Duration // DefaultCacheMaxTTL
	AlertInterval time.Duration // repeats of one name and type within this are not re-alerted
	AlertRate     float64       // alerts per second at most, beyond a burst of AlertBurst (DefaultAlertRate)
	AlertBurst    int           // DefaultAlertBurst
}

// ConfigFromEffective fills the per-experiment fields of a Config from the
// experiment's effective policy; the caller adds NS, Listen, Upstreams,
// Alerts and Logger.
func ConfigFromEffective(eff *configs.Effective) Config {
	return Config{
		Experiment:   eff.ID,
		Any:          eff.DNSAny,
		Names:        append([]string(nil), eff.DNSNames...),
		DenyNXDomain: eff.DNSDenyNXDomain,
		QPS:          eff.DNSQPS,
	}
}

// Proxy is one running proxy. Create with New, serve with Run.
type Proxy struct {
	cfg     Config
	log     hclog.Logger
	match   *Matcher
	ex      exchanger // the upstream pool; tests replace it
	pool    *pool
	limiter *rate.Limiter
	cache   *cache
	stats   counters

	udp   []*udpSock
	tcp   []*net.TCPListener
	addrs []netip.AddrPort

	inflight chan struct{} // semaphore for forwarded queries
	alerts   chan alert.Record
	alertMu  sync.Mutex
	alerted  map[string]time.Time
	// alertLimit bounds alerts per second (AlertRate, burst AlertBurst).
	alertLimit *rate.Limiter
	rateText   string

	mu      sync.Mutex
	conns   map[net.Conn]struct{}
	closing bool
	ran     atomic.Bool
	wg      sync.WaitGroup
}

// New validates cfg, compiles the allowlist and opens the listeners (so a
// bad address fails here, when the experiment starts). Call Run to serve, or
// Close if Run will not be called.
func New(cfg Config) (*Proxy, error) {
	if err := configs.ValidID(cfg.Experiment); cfg.Experiment != "" && err != nil {
		return nil, fmt.Errorf("dns proxy: %w", err)
	}
	m, err := CompileMatcher(cfg.Any, cfg.Names)
	if err != nil {
		return nil, fmt.Errorf("dns proxy for experiment %q: %w", cfg.Experiment, err)
	}
	if len(cfg.Upstreams) == 0 {
		if cfg.ResolvConf == "" {
			cfg.ResolvConf = DefaultResolvConf
		}
		u, err := UpstreamsFromResolvConf(cfg.ResolvConf)
		if err != nil {
			return nil, fmt.Errorf("dns proxy for experiment %q: no upstreams in the node policy: %w", cfg.Experiment, err)
		}
		cfg.Upstreams = u
	}
	ups, err := normalizeUpstreams(cfg.Upstreams)
	if err != nil {
		return nil, fmt.Errorf("dns proxy for experiment %q: %w", cfg.Experiment, err)
	}
	if len(cfg.Listen) == 0 {
		return nil, fmt.Errorf("dns proxy for experiment %q: no listen address (give the experiment's gateway addresses)", cfg.Experiment)
	}
	setDefault(&cfg.Timeout, DefaultTimeout)
	setDefault(&cfg.QueryTimeout, DefaultQueryTimeout)
	setDefault(&cfg.TCPIdle, DefaultTCPIdle)
	setDefault(&cfg.CacheMaxTTL, DefaultCacheMaxTTL)
	setDefault(&cfg.AlertInterval, DefaultAlertInterval)
	setDefault(&cfg.AlertRate, DefaultAlertRate)
	setDefault(&cfg.AlertBurst, DefaultAlertBurst)
	setDefault(&cfg.MaxTCPQueries, DefaultMaxTCPQueries)
	setDefault(&cfg.MaxTCPConns, DefaultMaxTCPConns)
	setDefault(&cfg.MaxInflight, DefaultMaxInflight)
	setDefault(&cfg.CacheSize, DefaultCacheSize)
	if cfg.Alerts == nil {
		cfg.Alerts = alert.Discard
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	p := &Proxy{
		cfg:        cfg,
		log:        cfg.Logger.With("experiment", cfg.Experiment),
		match:      m,
		cache:      newCache(cfg.CacheSize, cfg.CacheMaxTTL),
		inflight:   make(chan struct{}, cfg.MaxInflight),
		alerts:     make(chan alert.Record, 256),
		alerted:    map[string]time.Time{},
		alertLimit: rate.NewLimiter(rate.Limit(cfg.AlertRate), cfg.AlertBurst),
		conns:      map[net.Conn]struct{}{},
	}
	if cfg.QPS > 0 {
		p.limiter = rate.NewLimiter(rate.Limit(cfg.QPS), cfg.QPS)
		p.rateText = fmt.Sprintf("query rate limit of %d/s for this experiment exceeded", cfg.QPS)
	}
	p.pool = newPool(cfg.NS, ups, cfg.Timeout, cfg.QueryTimeout, &p.stats)
	p.ex = p.pool
	for _, a := range cfg.Listen {
		if err := p.listen(a); err != nil {
			p.Close()
			return nil, fmt.Errorf("dns proxy for experiment %q: %w", cfg.Experiment, err)
		}
	}
	return p, nil
}

func setDefault[T comparable](v *T, d T) {
	var zero T
	if *v == zero {
		*v = d
	}
}

func normalizeUpstreams(in []string) ([]string, error) {
	var out []string
	for _, u := range in {
		if ap, err := netip.ParseAddrPort(u); err == nil {
			out = append(out, ap.String())
			continue
		}
		a, err := netip.ParseAddr(u)
		if err != nil {
			return nil, fmt.Errorf("upstream resolver %q: want an IP address or ip:port", u)
		}
		out = append(out, netip.AddrPortFrom(a, 53).String())
	}
	if len(out) == 0 {
		return nil, errors.New("no upstream resolvers (set them in the node policy or /etc/resolv.conf)")
	}
	return out, nil
}

// freebind lets the listener bind the gateway address even while IPv6
// duplicate address detection still marks it tentative.
func freebind(network, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		if network == "udp6" || network == "tcp6" {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_FREEBIND, 1)
		} else {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_FREEBIND, 1)
		}
	})
	if err != nil {
		return err
	}
	return serr
}

func (p *Proxy) listen(addr string) error {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return fmt.Errorf("listen address %q: want ip:port: %w", addr, err)
	}
	lc := net.ListenConfig{Control: freebind}
	for try := 0; ; try++ {
		var us []*udpSock
		var tl net.Listener
		err := nsdo.In(p.cfg.NS, func() error {
			if ap.Port() == 0 {
				// A free port, chosen on UDP, one socket (a SO_REUSEPORT
				// socket binding port 0 could land in another group of
				// the same user on that port).
				us0, err := listenUDPSock(ap, false)
				if err != nil {
					return err
				}
				us = []*udpSock{us0}
				tap := netip.AddrPortFrom(ap.Addr(), us0.local.Port())
				if tl, err = lc.Listen(context.Background(), "tcp", tap.String()); err != nil {
					us0.close()
					return fmt.Errorf("listen tcp %s: %w", tap, err)
				}
				return nil
			}
			// The TCP listener first: it is exclusive, so a second proxy
			// given the same address fails here instead of joining the
			// UDP sockets' SO_REUSEPORT group.
			var err error
			if tl, err = lc.Listen(context.Background(), "tcp", ap.String()); err != nil {
				return fmt.Errorf("listen tcp %s: %w", ap, err)
			}
			if us, err = listenUDPGroup(ap, udpReaders); err != nil {
				tl.Close()
				return err
			}
			return nil
		})
		if err != nil {
			if ap.Port() == 0 && try < 10 && errors.Is(err, syscall.EADDRINUSE) {
				continue // the UDP port chosen is taken on TCP: pick another
			}
			return err
		}
		p.udp = append(p.udp, us...)
		p.tcp = append(p.tcp, tl.(*net.TCPListener))
		p.addrs = append(p.addrs, netip.AddrPortFrom(ap.Addr(), us[0].local.Port()))
		return nil
	}
}

// Addrs returns the bound listen addresses (UDP and TCP share each port).
func (p *Proxy) Addrs() []netip.AddrPort { return append([]netip.AddrPort(nil), p.addrs...) }

// Run serves until ctx is done, then closes the listeners and the upstream
// sockets and waits for every goroutine it started. It may be called once.
func (p *Proxy) Run(ctx context.Context) error {
	if !p.ran.CompareAndSwap(false, true) {
		return errors.New("dns proxy: Run called twice")
	}
	p.mu.Lock()
	closed := p.closing
	p.mu.Unlock()
	if closed { // Close came first and may have left the sockets to Run
		p.freeUDP()
		p.pool.close()
		return errors.New("dns proxy: Run called after Close")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	p.log.Info("dns proxy serving", "addrs", fmt.Sprint(p.addrs), "upstreams", fmt.Sprint(p.pool.upstreamAddrs()))

	var alertWG sync.WaitGroup
	alertWG.Add(1)
	go func() {
		defer alertWG.Done()
		p.alertLoop(ctx)
	}()
	for _, uc := range p.udp {
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.serveUDP(ctx, uc)
		}()
	}
	for _, tl := range p.tcp {
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.serveTCP(ctx, tl)
		}()
	}
	<-ctx.Done()
	p.Close()
	p.wg.Wait()
	p.freeUDP()
	p.pool.close()
	alertWG.Wait()
	p.log.Info("dns proxy stopped")
	return nil
}

// Close closes the listeners and client connections. Run calls it when its
// context is done; call it directly only when Run is not used.
func (p *Proxy) Close() {
	p.mu.Lock()
	if p.closing {
		p.mu.Unlock()
		return
	}
	p.closing = true
	ran := p.ran.Load()
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	for _, u := range p.udp {
		u.shutdown() // wakes the readers; Run frees the sockets after them
	}
	for _, t := range p.tcp {
		t.Close()
	}
	if !ran {
		p.freeUDP()
		p.pool.close()
	}
}

// freeUDP releases the UDP sockets; nothing may use them any more.
func (p *Proxy) freeUDP() {
	for _, u := range p.udp {
		u.close()
	}
}

func (pl *pool) upstreamAddrs() []string {
	var out []string
	for _, u := range pl.ups {
		out = append(out, u.addr)
	}
	return out
}

// alertLoop hands alerts to the Sink off the query path: the query path only
// does a non-blocking channel send and counts what does not fit.
func (p *Proxy) alertLoop(ctx context.Context) {
	for {
		select {
		case r := <-p.alerts:
			p.cfg.Alerts.Emit(r)
		case <-ctx.Done():
			for {
				select {
				case r := <-p.alerts:
					p.cfg.Alerts.Emit(r)
				default:
					return
				}
			}
		}
	}
}

// alertDenied queues one alert for a denied name (lowercase wire form),
// unless the same name and type was alerted within AlertInterval.
func (p *Proxy) alertDenied(wire []byte, qtype uint16) { p.alertDeniedVia(wire, qtype, "") }

// alertDeniedVia is alertDenied for a denied name that an answer for the
// allowed name via led to (a CNAME or DNAME chain, or a record's owner).
func (p *Proxy) alertDeniedVia(wire []byte, qtype uint16, via string) {
	var kb [258]byte
	key := append(append(kb[:0], wire...), byte(qtype>>8), byte(qtype))
	now := time.Now()
	p.alertMu.Lock()
	if t, ok := p.alerted[string(key)]; ok && now.Sub(t) < p.cfg.AlertInterval {
		p.alertMu.Unlock()
		p.stats.alertsSuppressed.Add(1)
		return
	}
	if !p.alertLimit.AllowN(now, 1) {
		// A flood of distinct names (random subdomains): the alert path
		// gets a bounded rate; the refusals are still counted.
		p.alertMu.Unlock()
		p.stats.alertsSuppressed.Add(1)
		return
	}
	if len(p.alerted) >= 4096 {
		clear(p.alerted)
	}
	p.alerted[string(key)] = now
	p.alertMu.Unlock()
	// A copy: wire is usually on the caller's stack, and handing it to
	// the parsers below would move it to the heap on every query.
	w := append([]byte(nil), wire...)
	name, _, err := dns.UnpackDomainName(w, 0)
	if err != nil {
		name = fmt.Sprintf("%q", w)
	}
	fix := "declare the name (or a parent domain) in the manifest's dns list"
	r := alert.Record{
		Time:       now.UTC(),
		Experiment: p.cfg.Experiment,
		Kind:       alert.KindDNS,
		Rule:       "dns",
		Name:       name,
		QType:      dns.Type(qtype).String(),
		Message:    fmt.Sprintf("dns query for %s %s refused: the name is not in this experiment's dns allowlist; %s", name, dns.Type(qtype), fix),
	}
	if via != "" {
		r.Message = fmt.Sprintf("dns answer for %s %s refused: it leads to %s, which is not in this experiment's dns allowlist; %s", via, dns.Type(qtype), name, fix)
	}
	select {
	case p.alerts <- r:
		p.stats.alerts.Add(1)
	default:
		p.stats.alertsDropped.Add(1)
	}
}
