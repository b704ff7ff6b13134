package netfilter

import (
	"bytes"
	"encoding/json"
	"strconv"
	"strings"
)

// renderNft renders an nftables JSON expression or value in nft's own
// syntax, for rule texts in evidence ("ip daddr 198.19.0.10 udp dport 53").
func renderNft(raw json.RawMessage) string {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return ""
	}
	switch raw[0] {
	case '"':
		var s string
		_ = json.Unmarshal(raw, &s)
		return s
	case '[':
		var l []json.RawMessage
		_ = json.Unmarshal(raw, &l)
		parts := make([]string, len(l))
		for i, x := range l {
			parts[i] = renderNft(x)
		}
		return strings.Join(parts, ",")
	case '{':
	default:
		return string(raw)
	}
	k, v, err := oneKey(raw)
	if err != nil {
		return string(raw)
	}
	str := func(key string) string { return renderNft(jsonField(v, key)) }
	switch k {
	case "payload":
		if str("protocol") != "" {
			return str("protocol") + " " + str("field")
		}
		return "@" + str("base") + "," + str("offset") + "," + str("len")
	case "meta":
		switch key := str("key"); key {
		case "iifname", "oifname", "iif", "oif", "mark":
			return "meta " + key
		default:
			return "meta " + key
		}
	case "ct":
		if d := str("dir"); d != "" {
			return "ct " + d + " " + str("key")
		}
		return "ct " + str("key")
	case "fib":
		return "fib " + strings.ReplaceAll(str("flags"), ",", " . ") + " " + str("result")
	case "&", "|", "^", "<<", ">>":
		var args []json.RawMessage
		_ = json.Unmarshal(v, &args)
		if len(args) == 2 {
			return renderNft(args[0]) + " " + k + " " + renderHex(args[1])
		}
	case "concat":
		var l []json.RawMessage
		_ = json.Unmarshal(v, &l)
		parts := make([]string, len(l))
		for i, x := range l {
			parts[i] = renderNft(x)
		}
		return strings.Join(parts, " . ")
	case "prefix":
		return str("addr") + "/" + str("len")
	case "range":
		var l []json.RawMessage
		_ = json.Unmarshal(v, &l)
		if len(l) == 2 {
			return renderNft(l[0]) + "-" + renderNft(l[1])
		}
	case "set":
		var l []json.RawMessage
		if json.Unmarshal(v, &l) != nil {
			return "{ " + renderNft(v) + " }"
		}
		parts := make([]string, len(l))
		for i, x := range l {
			var pair []json.RawMessage
			if json.Unmarshal(x, &pair) == nil && len(pair) == 2 {
				parts[i] = renderNft(pair[0]) + " : " + renderNft(pair[1])
			} else {
				parts[i] = renderNft(x)
			}
		}
		return "{ " + strings.Join(parts, ", ") + " }"
	case "elem":
		return str("val")
	case "numgen":
		s := "numgen " + str("mode") + " mod " + str("mod")
		if o := str("offset"); o != "" && o != "0" {
			s += " offset " + o
		}
		return s
	case "jump", "goto":
		return k + " " + str("target")
	case "accept", "drop", "continue", "return", "queue":
		return k
	case "map":
		return renderNft(jsonField(v, "key")) + " map " + renderNft(jsonField(v, "data"))
	}
	return k + " " + strings.TrimSpace(string(v))
}

func renderHex(raw json.RawMessage) string {
	var n json.Number
	if json.Unmarshal(raw, &n) == nil {
		if u, err := strconv.ParseUint(n.String(), 10, 64); err == nil {
			return "0x" + strconv.FormatUint(u, 16)
		}
	}
	return renderNft(raw)
}

// renderStmt renders one rule statement.
func renderStmt(kind string, raw json.RawMessage) string {
	str := func(key string) string { return renderNft(jsonField(raw, key)) }
	switch kind {
	case "match":
		left := str("left")
		right := renderNft(jsonField(raw, "right"))
		if bytes.HasPrefix(bytes.TrimSpace(jsonField(raw, "right")), []byte("{")) && !bytes.Contains(jsonField(raw, "right"), []byte(`"set"`)) &&
			!bytes.Contains(jsonField(raw, "right"), []byte(`"prefix"`)) && !bytes.Contains(jsonField(raw, "right"), []byte(`"range"`)) {
			right = "{ " + right + " }"
		}
		if isMarkLike(left) {
			right = renderHex(jsonField(raw, "right"))
		}
		switch op := str("op"); op {
		case "==", "in":
			if strings.Contains(left, " & ") || strings.Contains(left, " | ") || strings.Contains(left, " ^ ") {
				return left + " == " + right
			}
			return left + " " + right
		default:
			return left + " " + op + " " + right
		}
	case "counter":
		return "counter"
	case "log":
		if p := str("prefix"); p != "" {
			return "log prefix " + strconv.Quote(p)
		}
		return "log"
	case "mangle":
		val := renderNft(jsonField(raw, "value"))
		if isMarkLike(str("key")) {
			val = renderHex(jsonField(raw, "value"))
		}
		return str("key") + " set " + val
	case "vmap":
		return str("key") + " vmap " + renderNft(jsonField(raw, "data"))
	case "dnat", "snat":
		s := kind
		if f := str("family"); f != "" {
			s += " " + f
		}
		s += " to " + str("addr")
		if p := str("port"); p != "" {
			s += ":" + p
		}
		return s
	case "masquerade", "redirect":
		s := kind
		if p := str("port"); p != "" {
			s += " to :" + p
		}
		if f := str("flags"); f != "" {
			s += " " + f
		}
		return s
	case "reject":
		if e := str("expr"); e != "" {
			return "reject with " + str("type") + " " + e
		}
		return "reject"
	case "accept", "drop", "continue", "return", "notrack", "queue":
		return kind
	case "jump", "goto":
		return kind + " " + str("target")
	case "limit":
		return "limit rate " + str("rate") + "/" + str("per")
	case "xt":
		return "xt " + str("type") + " " + str("name")
	}
	return renderNft(mustObj(kind, raw))
}

func isMarkLike(s string) bool {
	return s == "meta mark" || s == "ct mark" || strings.HasPrefix(s, "meta mark ") || strings.HasPrefix(s, "ct mark ")
}
