package core

import (
	"strings"
	"testing"
)

func TestValidHeaderName(t *testing.T) {
	tests := []struct {
		in   string
		want bool
	}{
		{"X-Tenant-ID", true},
		{"x_b3.span~id", true},
		{"!#$%&'*+-.^_`|~09azAZ", true},
		{strings.Repeat("a", 128), true},
		{"", false},
		{strings.Repeat("a", 129), false},
		{"X Tenant", false},
		{"X-Tenant:", false},
		{"Tenant\n", false},
		{"é", false},
		{"(a)", false},
	}
	for _, tt := range tests {
		if got := ValidHeaderName(tt.in); got != tt.want {
			t.Errorf("ValidHeaderName(%q): got %v, want %v", tt.in, got, tt.want)
		}
	}
}

func TestEqualFoldASCII(t *testing.T) {
	for _, tt := range []struct {
		a, b string
		want bool
	}{
		{"Bearer", "bearer", true},
		{"BEARER ", "Bearer ", true},
		{"x-edge-consumer", "X-Edge-Consumer", true},
		{"Bearer", "Bearers", false},
		{"Bearer", "Beare_", false},
		{"\u212a", "k", false}, // the Kelvin sign folds to k in strings.EqualFold, not here
		{"", "", true},
	} {
		if got := EqualFoldASCII(tt.a, tt.b); got != tt.want {
			t.Errorf("EqualFoldASCII(%q, %q): got %v, want %v", tt.a, tt.b, got, tt.want)
		}
		if got := EqualFoldASCII([]byte(tt.a), tt.b); got != tt.want {
			t.Errorf("EqualFoldASCII([]byte(%q), %q): got %v, want %v", tt.a, tt.b, got, tt.want)
		}
	}
}
