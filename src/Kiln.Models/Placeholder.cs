namespace Kiln.Models; internal static class Placeholder { }
