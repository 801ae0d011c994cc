package quota

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/nftables"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

func TestCompileGolden(t *testing.T) {
	tab := &nftables.Table{Name: TableName, Family: nftables.TableFamilyINet}
	for _, c := range []struct {
		name string
		e    Exp
	}{
		{"budget", Exp{ID: "e1", HostIf: "arke1", BudgetBytes: 2_000_000, UpPriority: 0xa4c10002, DownPriority: 0xa4c20002}},
		{"nobudget", Exp{ID: "e2", HostIf: "arke2"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := Compile(tab, c.e, 5).String()
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
				t.Errorf("rules differ from %s:\n%s", path, got)
			}
		})
	}
}

func TestCompileShape(t *testing.T) {
	tab := &nftables.Table{Name: TableName, Family: nftables.TableFamilyINet}
	d := Compile(tab, Exp{ID: "e1", HostIf: "arke1", BudgetBytes: 1}, 5)
	s := d.String()
	for _, want := range []string{`prefix="ark:e1:quota"`, "objref(type=2,e1_quota)", "objref(type=1,e1_up)", "objref(type=1,e1_down)", `userdata="arkgw:e1"`} {
		if !strings.Contains(s, want) {
			t.Errorf("missing %s in\n%s", want, s)
		}
	}
	if strings.Contains(s, "meta-set") {
		t.Errorf("priority set without priorities:\n%s", s)
	}
	if n := len(Compile(tab, Exp{ID: "e1", HostIf: "arke1"}, 5).Exp); n != 2 {
		t.Errorf("without budget: %d rules in exp chain, want 2 (no quota check)", n)
	}
	for _, bad := range []Exp{{ID: "", HostIf: "x"}, {ID: "a_b", HostIf: "x"}, {ID: "a", HostIf: ""}, {ID: "a", HostIf: "0123456789abcdef"}} {
		if validate(bad) == nil {
			t.Errorf("validate(%+v) = nil", bad)
		}
	}
}
