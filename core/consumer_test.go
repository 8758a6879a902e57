package core

import (
	"strings"
	"testing"
)

func TestSealConsumer(t *testing.T) {
	a, b := SealConsumer("alice"), SealConsumer("alice")
	if a == "" || a == b {
		t.Fatalf("got %q and %q, want two different non-empty sealed values", a, b)
	}
	if strings.Contains(a, "alice") {
		t.Fatalf("sealed value %q shows the identity", a)
	}
	if id, ok := OpenConsumer(a); !ok || id != "alice" {
		t.Fatalf("OpenConsumer: got %q, %v, want alice, true", id, ok)
	}
	tampered := []byte(a)
	tampered[len(tampered)-2] ^= 1
	for _, in := range []string{"", "alice", string(tampered), strings.Repeat("A", 4096), "!!!"} {
		if id, ok := OpenConsumer(in); ok {
			t.Errorf("OpenConsumer(%q): got %q, true, want false", in, id)
		}
	}
	if got := SealConsumer(strings.Repeat("x", MaxSealedConsumer+1)); got != "" {
		t.Errorf("over the bound: got %q, want \"\"", got)
	}
}

type values map[any]any

func (v values) SetCallValue(k, val any) { v[k] = val }
func (v values) CallValue(k any) any     { return v[k] }

func TestVerifiedConsumer(t *testing.T) {
	if SetVerifiedConsumer(struct{}{}, "x") {
		t.Fatal("a request without CallValues: got true, want false")
	}
	if _, ok := VerifiedConsumer(struct{}{}); ok {
		t.Fatal("a request without CallValues: got a consumer")
	}
	v := values{}
	if _, ok := VerifiedConsumer(v); ok {
		t.Fatal("nothing set: got a consumer")
	}
	SetVerifiedConsumer(v, "bob")
	if id, ok := VerifiedConsumer(v); !ok || id != "bob" {
		t.Fatalf("got %q, %v, want bob, true", id, ok)
	}
}

func FuzzOpenConsumer(f *testing.F) {
	f.Add(SealConsumer("alice"))
	f.Add("")
	f.Fuzz(func(t *testing.T, s string) {
		if id, ok := OpenConsumer(s); ok && id == "" {
			t.Fatal("opened to an empty identity")
		}
	})
}
