package longrun

import "testing"

// The one table maps exactly the core's error kinds (longrun::ErrorKind::ALL, through the C
// ABI), each from its own code: a kind added to the core fails here until this SDK has it.
func TestTheKindTableCoversExactlyTheKindsOfTheCore(t *testing.T) {
	core := map[Kind]bool{}
	for _, k := range coreKinds() {
		core[k] = true
	}
	if len(core) == 0 {
		t.Fatal("the core lists no error kinds")
	}
	coded := map[Kind]bool{} // core kinds whose own code is in the table
	for code, kind := range kinds {
		if name := Kind(codeName(code)); core[name] {
			if kind != name {
				t.Errorf("the code of %s maps to %s", name, kind)
			}
			coded[name] = true
		} else if kind != KindInternal && !core[kind] {
			t.Errorf("code %s maps to %s, which is no kind of the core", codeName(code), kind)
		}
	}
	for k := range core {
		if !coded[k] {
			t.Errorf("the core's kind %s has no code in the table", k)
		}
	}
}
