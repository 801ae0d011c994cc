package alert

import (
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
)

// Syslog facilities and severities used by FormatRFC5424.
const (
	FacilityDaemon = 3
	FacilityLocal0 = 16

	SevErr     = 3
	SevWarning = 4
	SevNotice  = 5
)

// SDID is the structured-data id of arkgw's element in syslog messages
// (32473 is the private enterprise number reserved for documentation).
const SDID = "arkgw@32473"

// SyslogHeader is the fixed part of RFC 5424 messages.
type SyslogHeader struct {
	Facility int    // default FacilityDaemon when 0
	Hostname string // "-" when empty
	AppName  string // default "arkgw"
	ProcID   string // default the pid
}

// Severity returns the syslog severity for a record kind: err for the alert
// path losing records and the daemon's own faults, notice for enforcement, warning otherwise.
func Severity(kind string) int {
	switch kind {
	case KindOverrun, KindFault:
		return SevErr
	case KindEnforced:
		return SevNotice
	}
	return SevWarning
}

// FormatRFC5424 formats r as one RFC 5424 message:
//
//	<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [arkgw@32473 exp=".." rule=".."] BOM{json}
//
// MSGID is the record kind; the message is the record as JSON (UTF-8, with
// the BOM the RFC asks for).
func FormatRFC5424(h SyslogHeader, r Record) []byte {
	fac := h.Facility
	if fac <= 0 || fac > 23 {
		fac = FacilityDaemon
	}
	pri := fac*8 + Severity(r.Kind)
	ts := r.Time
	if ts.IsZero() {
		ts = time.Now()
	}
	app := h.AppName
	if app == "" {
		app = "arkgw"
	}
	proc := h.ProcID
	if proc == "" {
		proc = strconv.Itoa(os.Getpid())
	}
	var b strings.Builder
	b.WriteString("<")
	b.WriteString(strconv.Itoa(pri))
	b.WriteString(">1 ")
	b.WriteString(ts.UTC().Format("2006-01-02T15:04:05.000000Z"))
	b.WriteByte(' ')
	b.WriteString(headerField(h.Hostname, 255))
	b.WriteByte(' ')
	b.WriteString(headerField(app, 48))
	b.WriteByte(' ')
	b.WriteString(headerField(proc, 128))
	b.WriteByte(' ')
	b.WriteString(headerField(r.Kind, 32))
	b.WriteString(" [")
	b.WriteString(SDID)
	sdParam(&b, "exp", r.Experiment)
	sdParam(&b, "rule", r.Rule)
	if r.Node != "" {
		sdParam(&b, "node", r.Node)
	}
	b.WriteString("] \xef\xbb\xbf")
	js, _ := Marshal(r)
	b.Write(js)
	return []byte(b.String())
}

// headerField makes s a valid RFC 5424 header field: printable US-ASCII
// without spaces, at most max bytes, "-" when empty.
func headerField(s string, max int) string {
	var b strings.Builder
	for i := 0; i < len(s) && b.Len() < max; i++ {
		c := s[i]
		if c > 32 && c < 127 {
			b.WriteByte(c)
		} else {
			b.WriteByte('_')
		}
	}
	if b.Len() == 0 {
		return "-"
	}
	return b.String()
}

func sdParam(b *strings.Builder, name, value string) {
	b.WriteByte(' ')
	b.WriteString(name)
	b.WriteString(`="`)
	for _, c := range value {
		switch c {
		case '"', '\\', ']':
			b.WriteByte('\\')
		}
		b.WriteRune(c)
	}
	b.WriteByte('"')
}

// SyslogOptions configure a SyslogSink.
type SyslogOptions struct {
	Header SyslogHeader
	Queue  int           // records buffered (default 4096); beyond, dropped and counted
	Dial   time.Duration // dial and write timeout (default 5 s)
	Logger hclog.Logger
}

// SyslogSink sends records as RFC 5424 messages over UDP (one datagram each,
// RFC 5426) or TCP (octet-counting framing, RFC 6587), from its own
// goroutine: Emit never blocks on the network. TCP reconnects after errors.
type SyslogSink struct {
	network, addr string
	opts          SyslogOptions
	ch            chan Record
	stop          chan struct{}
	wg            sync.WaitGroup
	closeOnce     sync.Once
	sent, dropped atomic.Uint64
}

// NewSyslogSink parses target ("udp://host:port" or "tcp://host:port"; port
// default 514) and starts the sender. Close it when done.
func NewSyslogSink(target string, opts SyslogOptions) (*SyslogSink, error) {
	u, err := url.Parse(target)
	if err != nil || (u.Scheme != "udp" && u.Scheme != "tcp") || u.Host == "" {
		return nil, fmt.Errorf("syslog target %q: want udp://host:port or tcp://host:port", target)
	}
	addr := u.Host
	if u.Port() == "" {
		addr = net.JoinHostPort(u.Hostname(), "514")
	}
	if opts.Queue <= 0 {
		opts.Queue = 4096
	}
	if opts.Dial <= 0 {
		opts.Dial = 5 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = hclog.NewNullLogger()
	}
	if opts.Header.Hostname == "" {
		opts.Header.Hostname, _ = os.Hostname()
	}
	s := &SyslogSink{network: u.Scheme, addr: addr, opts: opts, ch: make(chan Record, opts.Queue), stop: make(chan struct{})}
	s.wg.Add(1)
	go s.run()
	return s, nil
}

// Emit queues r; when the queue is full the record is dropped and counted.
func (s *SyslogSink) Emit(r Record) {
	select {
	case s.ch <- r:
	default:
		s.dropped.Add(1)
	}
}

// Sent and Dropped count messages.
func (s *SyslogSink) Sent() uint64    { return s.sent.Load() }
func (s *SyslogSink) Dropped() uint64 { return s.dropped.Load() }

// Close sends what is queued (bounded by the dial timeout) and stops.
func (s *SyslogSink) Close() error {
	s.closeOnce.Do(func() { close(s.stop) })
	s.wg.Wait()
	return nil
}

func (s *SyslogSink) run() {
	defer s.wg.Done()
	var conn net.Conn
	defer func() {
		if conn != nil {
			conn.Close()
		}
	}()
	backoff := time.Duration(0)
	send := func(r Record) bool {
		msg := FormatRFC5424(s.opts.Header, r)
		if s.network == "tcp" {
			msg = append([]byte(strconv.Itoa(len(msg))+" "), msg...)
		}
		for attempt := 0; attempt < 2; attempt++ {
			if conn == nil {
				if backoff > 0 {
					select {
					case <-time.After(backoff):
					case <-s.stop:
					}
				}
				c, err := net.DialTimeout(s.network, s.addr, s.opts.Dial)
				if err != nil {
					backoff = min(max(2*backoff, 100*time.Millisecond), 10*time.Second)
					s.opts.Logger.Warn("syslog dial failed", "target", s.addr, "error", err)
					continue
				}
				conn, backoff = c, 0
			}
			_ = conn.SetWriteDeadline(time.Now().Add(s.opts.Dial))
			if _, err := conn.Write(msg); err != nil {
				s.opts.Logger.Warn("syslog write failed", "target", s.addr, "error", err)
				conn.Close()
				conn = nil
				continue
			}
			s.sent.Add(1)
			return true
		}
		s.dropped.Add(1)
		return false
	}
	for {
		select {
		case r := <-s.ch:
			send(r)
		case <-s.stop:
			for {
				select {
				case r := <-s.ch:
					if !send(r) { // unreachable: do not hold shutdown
						s.dropped.Add(uint64(len(s.ch)))
						return
					}
				default:
					return
				}
			}
		}
	}
}
