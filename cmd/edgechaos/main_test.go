package main

import (
	"bytes"
	"slices"
	"strings"
	"testing"
)

func TestParseOnly(t *testing.T) {
	tests := []struct {
		in      string
		want    []int
		wantErr bool
	}{
		{"", nil, false},
		{"1,5,12", []int{1, 5, 12}, false},
		{" 13 ", []int{13}, false},
		{"0", nil, true},
		{"14", nil, true},
		{"1,x", nil, true},
	}
	for _, tt := range tests {
		got, err := parseOnly(tt.in)
		if (err != nil) != tt.wantErr || !slices.Equal(got, tt.want) {
			t.Errorf("parseOnly(%q): got %v, %v; want %v, error %v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}

// TestUsageErrors: bad flags and a missing binary exit 2 before anything
// starts.
func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{"-only", "99", "-runner", "/bin/sh"},
		{"-runner", "/nonexistent/go-runner"},
		{"-nosuchflag"},
	} {
		var out, errb bytes.Buffer
		if code := run(args, &out, &errb); code != 2 {
			t.Errorf("run(%q): got exit %d, want 2 (stderr %q)", args, code, errb.String())
		}
		if errb.Len() == 0 || strings.Contains(out.String(), "scenario") {
			t.Errorf("run(%q): want a message on stderr and no matrix, got stdout %q stderr %q", args, out.String(), errb.String())
		}
	}
}
