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
