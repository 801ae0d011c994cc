package configs

import (
	"strings"
	"testing"
	"time"
)

func TestOutputsSection(t *testing.T) {
	for _, tc := range []struct {
		name, toml string
		want       OutputsPolicy // compared field by field below when err == ""
		err        string
	}{
		{name: "absent is off", toml: ``, want: OutputsPolicy{Interval: 5 * time.Minute, Secure: true}},
		{name: "push with prefix", toml: `[outputs]
push = "s3://arkgw-results/nodes/eu/"
endpoint = "http://127.0.0.1:9000"
credentials = "/etc/arkgw/s3"
interval = "30s"
disk_budget_mb = 10
chunk_mb = 8`, want: OutputsPolicy{Push: "s3://arkgw-results/nodes/eu/", Bucket: "arkgw-results", Prefix: "nodes/eu",
			Endpoint: "127.0.0.1:9000", Secure: false, Interval: 30 * time.Second, DiskBudgetBytes: 10 << 20, ChunkBytes: 8 << 20}},
		{name: "push without prefix, https", toml: `[outputs]
push = "s3://results"
endpoint = "https://s3.example.net"`, want: OutputsPolicy{Push: "s3://results", Bucket: "results", Endpoint: "s3.example.net", Secure: true, Interval: 5 * time.Minute}},
		{name: "not s3", toml: "[outputs]\npush = \"https://x/y\"\nendpoint = \"https://s3.example.net\"", err: "outputs.push"},
		{name: "bad bucket", toml: "[outputs]\npush = \"s3://Big_Bucket/p\"\nendpoint = \"https://s3.example.net\"", err: "outputs.push"},
		{name: "no endpoint", toml: "[outputs]\npush = \"s3://results/p\"", err: "outputs.endpoint"},
		{name: "endpoint with path", toml: "[outputs]\npush = \"s3://results/p\"\nendpoint = \"https://s3.example.net/results\"", err: "outputs.endpoint"},
		{name: "relative credentials", toml: "[outputs]\npush = \"s3://results/p\"\nendpoint = \"https://s3.example.net\"\ncredentials = \"s3.cred\"", err: "outputs.credentials"},
		{name: "short interval", toml: "[outputs]\ninterval = \"10ms\"", err: "outputs.interval"},
		{name: "zero budget", toml: "[outputs]\ndisk_budget_mb = 0", err: "outputs.disk_budget_mb"},
		{name: "unknown key", toml: "[outputs]\nbucket = \"x\"", err: "outputs.bucket"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n, err := ParseNode("node.toml", []byte(tc.toml))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one naming %s", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			o := n.Outputs
			if o.Push != tc.want.Push || o.Bucket != tc.want.Bucket || o.Prefix != tc.want.Prefix ||
				o.Endpoint != tc.want.Endpoint || o.Secure != tc.want.Secure || o.Interval != tc.want.Interval {
				t.Errorf("got %+v, want %+v", o, tc.want)
			}
			if tc.want.DiskBudgetBytes != 0 && o.DiskBudgetBytes != tc.want.DiskBudgetBytes {
				t.Errorf("disk budget %d, want %d", o.DiskBudgetBytes, tc.want.DiskBudgetBytes)
			}
			if tc.want.ChunkBytes != 0 && o.ChunkBytes != tc.want.ChunkBytes {
				t.Errorf("chunk %d, want %d", o.ChunkBytes, tc.want.ChunkBytes)
			}
		})
	}
}
