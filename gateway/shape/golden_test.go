package shape

import (
	"flag"
	"os"
	"path/filepath"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

func TestPlanGolden(t *testing.T) {
	specs := []Spec{
		{ID: "a", HostIf: "arka", Slot: 0, RateBps: 10_000_000},
		{ID: "b", HostIf: "arkb", Slot: 1, RateBps: 1_000_000},
	}
	for _, c := range []struct {
		name string
		cfg  Config
	}{{"nocap", Config{}}, {"nodecap", Config{NodeBps: 8_000_000}}} {
		t.Run(c.name, func(t *testing.T) {
			p, err := Compile(c.cfg, specs)
			if err != nil {
				t.Fatal(err)
			}
			got := p.String()
			path := filepath.Join("testdata", c.name+".golden")
			if *update {
				os.MkdirAll("testdata", 0o755)
				if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run with -update)", err)
			}
			if got != string(want) {
				t.Errorf("plan differs from %s:\n%s", path, got)
			}
		})
	}
}
