package alert

// Tee returns a Sink that emits every record to each of sinks in order (nil
// sinks are skipped). Each sink must itself not block.
func Tee(sinks ...Sink) Sink {
	var out multi
	for _, s := range sinks {
		if s != nil {
			out = append(out, s)
		}
	}
	if len(out) == 1 {
		return out[0]
	}
	return out
}

type multi []Sink

func (m multi) Emit(r Record) {
	for _, s := range m {
		s.Emit(r)
	}
}
