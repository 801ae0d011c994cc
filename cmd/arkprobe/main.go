// Command arkprobe is a tiny static measurement probe shipped in arkgw's
// sample container root, so the example experiments and the demo have
// something to run: TCP connects, UDP echo, HTTP fetches and DNS lookups,
// each printing one line and exiting 0 on success, 1 on failure.
//
//	arkprobe tcp HOST:PORT
//	arkprobe udp HOST:PORT [PAYLOAD]
//	arkprobe http URL
//	arkprobe dns NAME [A|AAAA|TXT|MX]
package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

const timeout = 3 * time.Second

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: arkprobe tcp|udp|http|dns TARGET [ARG]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "tcp":
		err = probeTCP(os.Args[2])
	case "udp":
		payload := "arkprobe"
		if len(os.Args) > 3 {
			payload = os.Args[3]
		}
		err = probeUDP(os.Args[2], payload)
	case "http":
		err = probeHTTP(os.Args[2])
	case "dns":
		qtype := "A"
		if len(os.Args) > 3 {
			qtype = strings.ToUpper(os.Args[3])
		}
		err = probeDNS(os.Args[2], qtype)
	default:
		err = fmt.Errorf("unknown probe %q", os.Args[1])
	}
	if err != nil {
		fmt.Printf("%s %s: FAIL %v\n", os.Args[1], os.Args[2], err)
		os.Exit(1)
	}
}

func probeTCP(addr string) error {
	start := time.Now()
	c, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return err
	}
	defer c.Close()
	fmt.Printf("tcp %s: ok %v from %s\n", addr, time.Since(start).Round(time.Microsecond), c.LocalAddr())
	return nil
}

func probeUDP(addr, payload string) error {
	c, err := net.Dial("udp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	start := time.Now()
	if _, err := c.Write([]byte(payload)); err != nil {
		return err
	}
	buf := make([]byte, 2048)
	n, err := c.Read(buf)
	if err != nil {
		return fmt.Errorf("no reply: %w", err)
	}
	fmt.Printf("udp %s: ok %d bytes back in %v\n", addr, n, time.Since(start).Round(time.Microsecond))
	return nil
}

func probeHTTP(url string) error {
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	n, err := io.Copy(io.Discard, resp.Body)
	if err != nil {
		return err
	}
	fmt.Printf("http %s: %s, %d bytes\n", url, resp.Status, n)
	if resp.StatusCode >= 400 {
		return fmt.Errorf("status %s", resp.Status)
	}
	return nil
}

func probeDNS(name, qtype string) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	r := &net.Resolver{PreferGo: true}
	var out []string
	var err error
	switch qtype {
	case "A", "AAAA":
		network := "ip4"
		if qtype == "AAAA" {
			network = "ip6"
		}
		var ips []net.IP
		ips, err = r.LookupIP(ctx, network, name)
		for _, ip := range ips {
			out = append(out, ip.String())
		}
	case "TXT":
		out, err = r.LookupTXT(ctx, name)
	case "MX":
		var mx []*net.MX
		mx, err = r.LookupMX(ctx, name)
		for _, m := range mx {
			out = append(out, fmt.Sprintf("%d %s", m.Pref, m.Host))
		}
	default:
		return fmt.Errorf("type %q: use A, AAAA, TXT or MX", qtype)
	}
	if err != nil {
		return err
	}
	fmt.Printf("dns %s %s: %s\n", name, qtype, strings.Join(out, " "))
	return nil
}
