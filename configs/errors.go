package configs

import (
	"fmt"
	"strings"
)

// FieldError is one invalid value in a policy file. Its message names the
// file, the field (with index), the offending value and the fix:
//
//	manifest.toml: tcp[2] "10.0.0.0/8:0": port 0 is not a port; use 1-65535
type FieldError struct {
	File  string // file name as given to the parser
	Field string // e.g. "tcp[2]", "limits.max_mbps"
	Value string // the offending value as written; "" when there is none
	Msg   string // what is wrong and how to fix it
}

func (e *FieldError) Error() string {
	var b strings.Builder
	if e.File != "" {
		b.WriteString(e.File)
		b.WriteString(": ")
	}
	b.WriteString(e.Field)
	if e.Value != "" {
		fmt.Fprintf(&b, " %q", e.Value)
	}
	b.WriteString(": ")
	b.WriteString(e.Msg)
	return b.String()
}

// Conflict is one request of a manifest that exceeds the node owner's
// allowance. Any conflict refuses the experiment.
type Conflict struct {
	Field string // manifest field with index, e.g. "tcp[0]"
	Value string // the requested value as written; "" when there is none
	Msg   string // what is exceeded and how to resolve it
}

func (c Conflict) String() string {
	if c.Value != "" {
		return fmt.Sprintf("%s %q: %s", c.Field, c.Value, c.Msg)
	}
	return fmt.Sprintf("%s: %s", c.Field, c.Msg)
}

// errs collects field errors of one file.
type errs struct {
	file string
	list []error
}

func (e *errs) add(field, value, format string, args ...any) {
	e.list = append(e.list, &FieldError{File: e.file, Field: field, Value: value, Msg: fmt.Sprintf(format, args...)})
}

func (e *errs) addErr(field, value string, err error) {
	e.list = append(e.list, &FieldError{File: e.file, Field: field, Value: value, Msg: err.Error()})
}

func idx(field string, i int) string { return fmt.Sprintf("%s[%d]", field, i) }
