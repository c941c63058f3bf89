// The `kiln` executable: everything lives in KilnCli.Run, which tests call directly.

using System.Text;

Console.OutputEncoding = new UTF8Encoding(encoderShouldEmitUTF8Identifier: false);
return Kiln.Cli.KilnCli.Run(args, Console.Out, Console.Error);
