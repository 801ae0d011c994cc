package flowlog

import (
	"encoding/json"
	"errors"
	"net/http/httptest"
	"strings"
	"testing"

	ct "github.com/florianl/go-conntrack"
)

// A live dump that fails is reported, not shown as "no open flow" (on a
// node the API answered "flows": null with the dump failing silently).
func TestHandlerReportsLiveDumpError(t *testing.T) {
	s, err := OpenStore(t.TempDir(), 30)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	r := NewRecorder(Config{Store: s, Attribute: attribute})
	r.openHook = func() (*ct.Nfct, error) { return nil, errors.New("setns: bad file descriptor") }
	rec := httptest.NewRecorder()
	Handler(s, r).ServeHTTP(rec, httptest.NewRequest("GET", "/api/v1/flows?dst=198.51.100.1", nil))
	var res Result
	if err := json.Unmarshal(rec.Body.Bytes(), &res); err != nil {
		t.Fatalf("answer %s: %v", rec.Body, err)
	}
	if rec.Code != 200 || !strings.Contains(res.OpenError, "open conntrack netlink in netns current: setns: bad file descriptor") {
		t.Fatalf("status %d, answer %s: want the live dump's error in open_error", rec.Code, rec.Body)
	}
}
