package netfilter

import (
	"bytes"
	"encoding/json"
	"strconv"
)

// A small scanner over already validated JSON (the nft document is decoded
// once with encoding/json; its parts are then walked without decoding them
// again into maps, which made large rulesets slow).

func isJSONSpace(c byte) bool { return c == ' ' || c == '\n' || c == '\t' || c == '\r' }

func skipWS(b []byte, i int) int {
	for i < len(b) && isJSONSpace(b[i]) {
		i++
	}
	return i
}

// skipString returns the index after the string starting at b[i] == '"'.
func skipString(b []byte, i int) (int, bool) {
	i++
	for i < len(b) {
		switch b[i] {
		case '\\':
			i += 2
		case '"':
			return i + 1, true
		default:
			i++
		}
	}
	return i, false
}

// skipValue returns the index after the JSON value starting at b[i].
func skipValue(b []byte, i int) (int, bool) {
	i = skipWS(b, i)
	if i >= len(b) {
		return i, false
	}
	switch b[i] {
	case '"':
		return skipString(b, i)
	case '{', '[':
		depth := 0
		for i < len(b) {
			switch b[i] {
			case '"':
				j, ok := skipString(b, i)
				if !ok {
					return j, false
				}
				i = j
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1, true
				}
			}
			i++
		}
		return i, false
	}
	j := i
	for j < len(b) && b[j] != ',' && b[j] != '}' && b[j] != ']' && !isJSONSpace(b[j]) {
		j++
	}
	return j, j > i
}

var knownJSONKeys = map[string]string{}

func init() {
	for _, k := range []string{"match", "op", "left", "right", "payload", "protocol", "field", "meta", "key",
		"ct", "dir", "fib", "result", "flags", "concat", "set", "elem", "val", "comment", "prefix", "addr", "len",
		"range", "jump", "goto", "target", "accept", "drop", "return", "continue", "counter", "packets", "bytes",
		"vmap", "data", "map", "mangle", "value", "dnat", "snat", "masquerade", "redirect", "port", "family",
		"numgen", "mode", "mod", "offset", "reject", "type", "expr", "log", "prefix", "limit", "notrack", "&", "|", "^"} {
		knownJSONKeys[k] = k
	}
}

func jsonKey(b []byte) string {
	if bytes.IndexByte(b, '\\') < 0 {
		if k, ok := knownJSONKeys[string(b)]; ok {
			return k
		}
		return string(b)
	}
	s, err := strconv.Unquote(`"` + string(b) + `"`)
	if err != nil {
		return string(b)
	}
	return s
}

// objFields calls fn for each member of the JSON object raw, in order,
// until fn returns false. It reports whether raw is a well-formed object.
func objFields(raw []byte, fn func(key string, val json.RawMessage) bool) bool {
	i := skipWS(raw, 0)
	if i >= len(raw) || raw[i] != '{' {
		return false
	}
	i++
	first := true
	for {
		i = skipWS(raw, i)
		if i < len(raw) && raw[i] == '}' && first {
			return true
		}
		if i >= len(raw) || raw[i] != '"' {
			return false
		}
		j, ok := skipString(raw, i)
		if !ok {
			return false
		}
		key := jsonKey(raw[i+1 : j-1])
		i = skipWS(raw, j)
		if i >= len(raw) || raw[i] != ':' {
			return false
		}
		i = skipWS(raw, i+1)
		e, ok := skipValue(raw, i)
		if !ok {
			return false
		}
		if !fn(key, raw[i:e]) {
			return true
		}
		first = false
		i = skipWS(raw, e)
		if i < len(raw) && raw[i] == ',' {
			i++
			continue
		}
		return i < len(raw) && raw[i] == '}'
	}
}

// jsonField returns the member key of the JSON object raw, or nil.
func jsonField(raw []byte, key string) json.RawMessage {
	var out json.RawMessage
	objFields(raw, func(k string, v json.RawMessage) bool {
		if k == key {
			out = v
			return false
		}
		return true
	})
	return out
}
