package agent

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/netdoctor/netdoctor/internal/cluster"
)

// Requests and results are read from ConfigMaps anyone allowed to write in
// the namespace may have written: decoding must never panic.
func FuzzDecodeRequest(f *testing.F) {
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "r"}}
	_ = encode(cm, &Request{Version: RequestVersion, ID: "abc", Nodes: []string{"n1"}, Probe: &cluster.ProbeSpec{K: 3}})
	f.Add(cm.Data[keyJSON], []byte(nil))
	big := &Request{Version: RequestVersion, ID: "big"}
	for i := 0; i < 3000; i++ {
		big.Nodes = append(big.Nodes, "node-with-a-long-name")
	}
	cm2 := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "r2"}}
	_ = encode(cm2, big)
	f.Add("", cm2.BinaryData[keyGzip])
	f.Add(`{"version":"netdoctor.request/v1","probe":{"targets":[{"node":"a"}]}}`, []byte{0x1f, 0x8b, 0})
	f.Fuzz(func(t *testing.T, data string, gz []byte) {
		cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "x"}}
		if data != "" {
			cm.Data = map[string]string{keyJSON: data}
		}
		if gz != nil {
			cm.BinaryData = map[string][]byte{keyGzip: gz}
		}
		r, err := DecodeRequest(cm)
		if err == nil && r.Probe != nil {
			for _, tg := range r.Probe.Targets {
				_ = cluster.Plan(r.Probe, tg.Node)
			}
		}
		var res cluster.AgentResult
		_ = decode(cm, &res)
	})
}
