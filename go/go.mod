module example.invalid/longrun/go

// Go 1.23 for range-over-func iterators (iter.Seq2); run with GOTOOLCHAIN=local.
go 1.23
