package suggest

import (
	"bytes"
	"context"
	"testing"
)

func BenchmarkReadLog(b *testing.B) {
	data := generatedBlock(b)
	b.SetBytes(int64(len(data)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		s, _ := New("config.yaml", []byte(awsConfig), labelBy("app"))
		if err := s.ReadLog(context.Background(), "g", bytes.NewReader(data)); err != nil {
			b.Fatal(err)
		}
	}
}
