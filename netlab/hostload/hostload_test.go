package hostload

import (
	"strings"
	"testing"
)

func TestReadings(t *testing.T) {
	if got := LoadAvg(); len(strings.Fields(got)) != 3 {
		t.Errorf("LoadAvg() = %q, want three fields of /proc/loadavg", got)
	}
	total, steal := CPUTimes()
	if total == 0 || steal > total {
		t.Errorf("CPUTimes() = %d, %d: want a positive total holding the steal", total, steal)
	}
	var m Steal
	if pct, ok := m.Pct(); !ok || pct < 0 || pct > 100 {
		t.Errorf("first Pct() = %v, %v: want a share since boot", pct, ok)
	}
	if s := m.LoadSteal(); !strings.HasPrefix(s, "load "+Load1()[:1]) {
		t.Errorf("LoadSteal() = %q", s)
	}
}
