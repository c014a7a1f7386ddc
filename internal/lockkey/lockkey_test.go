package lockkey

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
)

// TestEncodingUnchanged pins the encoding: the canonical bytes and hashes
// below were computed by dblock's Key.Canonical and Key.Hash before the
// encoding moved here. Existing rows' key_hash must stay valid, so these
// values must never change.
func TestEncodingUnchanged(t *testing.T) {
	for _, tc := range []struct {
		f         Fields
		canonical string // hex; empty: not pinned (too long to read)
		hash      string // hex
	}{
		{Fields{}, "74786c6f636b2e6b65792e76310000000000", "de01859bb97758cdf2f33a03d9dc1b0f244184130f9045d510f78f33b975493c"},
		{Fields{Global: true}, "74786c6f636b2e6b65792e76310000000001", "7c513bba235ae9998e092b06eecb5e7db489fa8e8e996c0fd1944137cc27b4db"},
		{Fields{Resource: "order:42"}, "74786c6f636b2e6b65792e7631086f726465723a343200000000", "cf3cb2ea8322883404661b6aeb2633c8d8907dd7f0de9bbb00502b021b94fc35"},
		{Fields{Operation: "refund"}, "74786c6f636b2e6b65792e76310006726566756e64000000", "ea29712d612e3fc2d154bde1a1d70db3b25b6a1acab31cefe49dfaf696e16154"},
		{Fields{Method: "OrderService.Refund"}, "74786c6f636b2e6b65792e76310000134f72646572536572766963652e526566756e640000", "f4b1e00f22cc3adbb44aee09f5d5bb2c8023fa0904c88946c0318d17b53325e6"},
		{Fields{User: "u-7"}, "74786c6f636b2e6b65792e763100000003752d3700", "3e6346c07cf5e7ee31e0be81f22beb6d3f60808f65c2815bf6b395c5a717dd7d"},
		{Fields{Resource: "order:42", User: "u-7"}, "74786c6f636b2e6b65792e7631086f726465723a3432000003752d3700", "cbdb1f66375aa67671a654c174ad983ffaeaeb9c39458bcb88657de33c5a3ecb"},
		{Fields{Resource: "order:42", Operation: "refund", Method: "OrderService.Refund", User: "u-7"},
			"74786c6f636b2e6b65792e7631086f726465723a343206726566756e64134f72646572536572766963652e526566756e6403752d3700", "8e3e2c24154fb1426d48cabe56d8277514b752ccc5105943f0403e91b5c32f1d"},
		{Fields{Resource: "ab"}, "74786c6f636b2e6b65792e763102616200000000", "1236dd391ebad008ad6502afc645e0b4d1cd0fb003677b79a4b928dd7162e34d"},
		{Fields{Resource: "a", Operation: "b"}, "74786c6f636b2e6b65792e763101610162000000", "aefdbb1a8e29ab91404593fc0082f05191bcbaa488a5c85c83b2a4f676990666"},
		{Fields{Operation: "a", Method: "b"}, "74786c6f636b2e6b65792e763100016101620000", "03da1484be8b87cbfa3b75d5231553d8492379b1b7661efc1b3ee983bade0e7a"},
		{Fields{Resource: "ключ-🔒"}, "74786c6f636b2e6b65792e76310dd0bad0bbd18ed1872df09f949200000000", "7a2ab027ceee135121b2a7e9512f33192afb6f256a188e2102135b991fe5bedd"},
		{Fields{Resource: strings.Repeat("r", 200), User: strings.Repeat("u", 128)}, "", "062e2c69df2d7b5b7057078ca21933fc9fd37555418b34828fc23b8ff2a3591c"},
		{Fields{Resource: "order:42", Global: true}, "74786c6f636b2e6b65792e7631086f726465723a343200000001", "ecdf03405235eb27f00fb6d56a7d3d48faf0f6d521ecd2c2f4dfcc06ca210e03"},
	} {
		if got := hex.EncodeToString(tc.f.Canonical()); tc.canonical != "" && got != tc.canonical {
			t.Errorf("%+v: Canonical = %s, want %s", tc.f, got, tc.canonical)
		}
		h := tc.f.Hash()
		if got := hex.EncodeToString(h[:]); got != tc.hash {
			t.Errorf("%+v: Hash = %s, want %s", tc.f, got, tc.hash)
		}
	}
}

// FuzzCanonical: the encoding is deterministic and injective (it decodes
// back to the fields), and Hash follows it.
func FuzzCanonical(f *testing.F) {
	f.Add("order:42", "", "", "", false)
	f.Add("ab", "c", "", "", false)
	f.Add("a", "bc", "", "", false)
	f.Add("", "", "", "", true)
	f.Add("a\x00b", "\x01", "m", "u-7", false)
	f.Add(strings.Repeat("😀", 300), "", "", "", false)
	f.Fuzz(func(t *testing.T, r, o, m, u string, g bool) {
		k := Fields{Resource: r, Operation: o, Method: m, User: u, Global: g}
		c := k.Canonical()
		if !bytes.Equal(c, k.Canonical()) || k.Hash() != k.Hash() {
			t.Fatal("not deterministic")
		}
		back, err := decode(c)
		if err != nil {
			t.Fatalf("Canonical(%+v) = %q does not decode: %v", k, c, err)
		}
		if back != k {
			t.Fatalf("Canonical(%+v) decodes to %+v", k, back)
		}
	})
}

// decode is the inverse of Canonical.
func decode(b []byte) (Fields, error) {
	var f Fields
	rest, ok := bytes.CutPrefix(b, []byte(version))
	if !ok {
		return f, errors.New("no version tag")
	}
	for _, dst := range []*string{&f.Resource, &f.Operation, &f.Method, &f.User} {
		n, w := binary.Uvarint(rest)
		if w <= 0 || uint64(len(rest)-w) < n {
			return f, errors.New("bad length")
		}
		*dst, rest = string(rest[w:w+int(n)]), rest[w+int(n):]
	}
	if len(rest) != 1 || rest[0] > 1 {
		return f, errors.New("bad Global byte")
	}
	f.Global = rest[0] == 1
	return f, nil
}
