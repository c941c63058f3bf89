// The kiln-gpucheck executable: everything lives in GpuCheckProgram.Run, which the CI test calls in-process.

using System.Text;

Console.OutputEncoding = new UTF8Encoding(encoderShouldEmitUTF8Identifier: false);
return Kiln.GpuCheck.GpuCheckProgram.Run(args, Console.Out, Console.Error, Environment.GetEnvironmentVariable("OUT"));
