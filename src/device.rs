//! Device selection (`--device auto|cpu|cuda[:N]|metal`) and dtype choice.
