package rules

import "testing"

func TestParseNativeNftKeepsNativeTableNamedFilter(t *testing.T) {
	const doc = `{"nftables":[{"metainfo":{"version":"1.0.6","json_schema_version":1}},
{"table":{"family":"ip","name":"filter","handle":1}},
{"chain":{"family":"ip","table":"filter","name":"INPUT","handle":1,"type":"filter","hook":"input","prio":0,"policy":"accept"}},
{"table":{"family":"ip","name":"nat","handle":2}},
{"chain":{"family":"ip","table":"nat","name":"input","handle":1,"type":"filter","hook":"input","prio":0,"policy":"accept"}}]}`
	tests := []struct {
		name            string
		haveIptablesNft bool
		trusted         map[string]bool
		want            []string
	}{
		{"iptables-nft present: its own filter table dropped, native nat kept", true, nil, []string{"nat"}},
		{"no iptables-nft dump: everything kept", false, nil, []string{"filter", "nat"}},
		{"iptables-nft table with nft-written rules kept from the nft dump", true, map[string]bool{"ip filter": true}, []string{"filter", "nat"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rs, err := parseNativeNft(doc, tc.haveIptablesNft, tc.trusted)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, tb := range rs.Tables {
				got = append(got, tb.Name)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("tables %v, want %v", got, tc.want)
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Fatalf("tables %v, want %v", got, tc.want)
				}
			}
		})
	}
}
