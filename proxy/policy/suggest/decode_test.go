package suggest

import (
	"bytes"
	"reflect"
	"testing"
)

func decodeSeeds(t testing.TB) [][]byte {
	seeds := bytes.Split(generatedBlock()[:2000], []byte("\n"))
	for _, l := range []string{
		`{"pod":"a","labels":{"app":"x"},"labels":{"b":"c"},"query_keys":["k"],"query_keys":[]}`,
		`{"pod":"a","labels":{"app":"x"},"labels":null,"path":"/p","path":null}`,
		`{"Path":"/upper","decision":"allow"}`,
		`{"PATH":"/upper"}`,
		`{"path":"/a\/b","decision":"allow"}`,
		`{"path":"/caf\u00e9"}`,
		"{\"path\":\"/caf\xc3\xa9\"}",
		"{\"path\":\"/bad\xff\"}",
		`{"status":0123}`,
		`{"status":-1.5e+3,"bytes":0,"duration_ms":1E2}`,
		`{"status":1.}`,
		`{"extra":{"a":[1,2,{"b":null}],"c":true},"decision":"deny"}`,
		`{"labels":{"app":1}}`,
		`{"query_keys":["a",1]}`,
		`{"labels":{"app":null}}`,
		` { "pod" : "a" , "labels" : { "app" : "v" } } `,
		`{"pod":"a",}`,
		`{"pod":"a"} x`,
		`[1,2]`,
		`null`,
		`{}`,
		`{"a":tru}`,
	} {
		seeds = append(seeds, []byte(l))
	}
	return seeds
}

// FuzzDecodeLine holds the direct path to encoding/json's reading: when it
// accepts a line, encoding/json accepts it too and reads the same fields.
func FuzzDecodeLine(f *testing.F) {
	for _, s := range decodeSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		checkDecode(t, line)
	})
}

func TestDecodeLineAgreesWithEncodingJSON(t *testing.T) {
	for _, s := range decodeSeeds(t) {
		t.Run(string(s), func(t *testing.T) { checkDecode(t, s) })
	}
}

func checkDecode(t *testing.T, line []byte) {
	var fast, ref auditLine
	ok := fastDecode(line, "app", &interner{}, &fast)
	err := decodeJSON(line, "app", &ref)
	if !ok {
		return
	}
	if err != nil {
		t.Fatalf("direct path accepted %q, encoding/json refuses it: %v", line, err)
	}
	if len(fast.queryKeys) == 0 && len(ref.queryKeys) == 0 {
		fast.queryKeys, ref.queryKeys = nil, nil
	}
	if !reflect.DeepEqual(fast, ref) {
		t.Fatalf("%q\ndirect:        %+v\nencoding/json: %+v", line, fast, ref)
	}
}
