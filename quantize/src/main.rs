fn main() {
    println!("usage: quantize <in> <out> <type>");
}
