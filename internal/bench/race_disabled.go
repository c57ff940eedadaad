//go:build !race

package bench

// RaceEnabled reports whether this program was built with -race.
const RaceEnabled = false
