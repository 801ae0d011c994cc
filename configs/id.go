package configs

import "fmt"

// MaxIDLen keeps "ark"+id within the 15-byte interface name limit with room
// for a suffix, and log prefixes short.
const MaxIDLen = 10

// ValidID checks an experiment id: 1..10 characters of [a-z0-9], starting
// with a letter. Ids name interfaces, nft objects, cgroups and directories.
func ValidID(id string) error {
	if id == "" || len(id) > MaxIDLen {
		return fmt.Errorf("experiment id %q: must be 1 to %d characters", id, MaxIDLen)
	}
	for i, c := range id {
		switch {
		case c >= 'a' && c <= 'z':
		case c >= '0' && c <= '9' && i > 0:
		default:
			return fmt.Errorf("experiment id %q: only lowercase letters and digits, starting with a letter", id)
		}
	}
	return nil
}
